//! PostgreSQL with pgvector through sqlx. Applications query a view; freshet writes into
//! a table per model (`<table>__<hash>`: a uuid key, a `vector(dim)` column with an HNSW
//! cosine index, a `jsonb` payload, and indexed columns for `source_id`, `doc_key` and
//! `chunk_hash` generated from it). Tables and the view carry a `freshet` comment. With
//! a keyword side, a `text_search` column (`tsvector`, generated from the chunk text with
//! the `english` configuration, GIN-indexed) serves keyword queries, and hybrid queries
//! fuse its ranking with the vector ranking by reciprocal rank in one SQL statement.
//!
//! Invariants: a write returns after its transaction committed; the view is replaced in
//! one transaction; a filtered query returns k rows whenever k rows match (pgvector 0.6
//! filters after the HNSW scan, so a short answer is redone exactly); scroll and count
//! never use the approximate index; relations without freshet's comment are never
//! written to or dropped.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};

use super::{
    model_slug, with_retry, Catalog, Condition, Filter, Hit, IndexInfo, Payload, Point, PointId,
    Query, QueryMode, SparseKind, StoreError, StoredPoint, VectorStore,
};
use crate::config::PgvectorConfig;

/// Attempts of one call before a transient error reaches the caller.
const ATTEMPTS: u32 = 4;
/// pgvector's HNSW scan returns at most `hnsw.ef_search` rows, which it caps at 1000.
const MAX_EF_SEARCH: usize = 1000;
/// Payload fields kept as indexed columns (generated from the payload).
const COLUMNS: [&str; 3] = ["source_id", "doc_key", "chunk_hash"];

/// How a batch of points reaches the table. Both are measured by
/// `examples/pgvector_upsert.rs`; the store uses [`UpsertMethod::FASTEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertMethod {
    /// `INSERT .. SELECT FROM UNNEST(arrays) ON CONFLICT DO UPDATE`, one statement per
    /// `batch_rows` points.
    UnnestInsert,
    /// `COPY` into a temporary staging table, then one `INSERT .. SELECT .. ON CONFLICT`.
    CopyStaging,
}

impl UpsertMethod {
    pub const FASTEST: UpsertMethod = UpsertMethod::UnnestInsert;
}

/// The database, the schema and the view applications query.
pub struct PgvectorCatalog {
    settings: PgvectorConfig,
    /// `host:port/database`, for messages (never the password).
    target: String,
    pool: PgPool,
}

impl std::fmt::Debug for PgvectorCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgvectorCatalog")
            .field("target", &self.target)
            .field("view", &self.settings.table)
            .finish()
    }
}

/// Whether a failure may pass: a lost connection, a server restarting, a serialization
/// conflict, resources exhausted.
fn sql_error(err: sqlx::Error) -> StoreError {
    let transient = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
                || code == "55P03"
        }),
        _ => false,
    };
    if transient {
        StoreError::Operation(err.to_string())
    } else {
        StoreError::Rejected(err.to_string())
    }
}

fn quoted(schema: &str, name: &str) -> String {
    // Names are validated lower-case SQL words; quoting keeps them exact anyway.
    format!("\"{schema}\".\"{name}\"")
}

/// A SQL string literal (COMMENT takes no parameters).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The `freshet` entry of a relation's comment, if it has one.
fn marker(comment: Option<&str>) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(comment?).ok()?;
    value.get("freshet").cloned()
}

impl PgvectorCatalog {
    /// Connects with the URL from `url_env`, makes sure the extension and the schema
    /// exist, and fails naming the host (never the password) when the server cannot be
    /// reached.
    pub async fn connect(settings: &PgvectorConfig) -> Result<Self, StoreError> {
        let var = &settings.url_env;
        let url = std::env::var(var).map_err(|_| StoreError::Open {
            target: format!("${var}"),
            reason: format!("the environment variable {var} (the PostgreSQL URL) is not set"),
        })?;
        let options = PgConnectOptions::from_str(&url)
            .map_err(|_| StoreError::Open {
                target: format!("${var}"),
                reason: format!("the URL in {var} is not a valid PostgreSQL URL"),
            })?
            // "already exists, skipping" notices are not news.
            .options([("client_min_messages", "warning")]);
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("postgres")
        );
        let secret = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.password().map(str::to_string));
        let scrub = |text: String| match &secret {
            Some(secret) if !secret.is_empty() => text.replace(secret.as_str(), "***"),
            _ => text,
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(settings.timeout_s))
            .connect_with(options)
            .await
            .map_err(|err| StoreError::Unreachable {
                target: target.clone(),
                reason: scrub(err.to_string()),
            })?;
        let catalog = Self {
            settings: settings.clone(),
            target,
            pool,
        };
        catalog.prepare_database().await?;
        Ok(catalog)
    }

    async fn prepare_database(&self) -> Result<(), StoreError> {
        let installed: Option<String> =
            sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                .fetch_optional(&self.pool)
                .await
                .map_err(sql_error)?;
        if installed.is_none() {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
                .execute(&self.pool)
                .await
                .map_err(|err| StoreError::Open {
                    target: self.target.clone(),
                    reason: format!(
                        "the pgvector extension is not installed in this database and could not be created ({err}); install pgvector and run `CREATE EXTENSION vector` as a superuser"
                    ),
                })?;
        }
        // Looked up first: CREATE SCHEMA IF NOT EXISTS needs the right to create schemas
        // even when the schema exists, which an application's role often lacks.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.settings.schema)
                .fetch_one(&self.pool)
                .await
                .map_err(sql_error)?;
        if !exists {
            sqlx::query(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                self.settings.schema
            ))
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        }
        Ok(())
    }

    fn view(&self) -> &str {
        &self.settings.table
    }

    /// The relation's kind (`r` table, `v` view, ...) and its comment, if it exists.
    async fn relation(&self, name: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        with_retry("describe relation", ATTEMPTS, || async {
            let row = sqlx::query(
                "SELECT c.relkind::text AS kind, obj_description(c.oid, 'pg_class') AS comment
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2",
            )
            .bind(&self.settings.schema)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql_error)?;
            Ok(row.map(|r| {
                (
                    r.get::<String, _>("kind"),
                    r.get::<Option<String>, _>("comment"),
                )
            }))
        })
        .await
    }

    /// The model a table holds, when freshet made it for this view.
    fn owned_info(&self, name: &str, comment: Option<&str>) -> Option<IndexInfo> {
        let marker = marker(comment)?;
        if marker["view"].as_str() != Some(self.view()) {
            return None;
        }
        Some(IndexInfo {
            collection: name.to_string(),
            model_id: marker["model_id"].as_str()?.to_string(),
            dim: marker["dim"].as_u64()? as usize,
            sparse: serde_json::from_value(marker["sparse"].clone()).unwrap_or(None),
        })
    }

    fn marker_comment(&self, info: &IndexInfo) -> String {
        serde_json::json!({
            "freshet": {
                "view": self.view(),
                "collection": info.collection,
                "model_id": info.model_id,
                "dim": info.dim,
                "sparse": info.sparse,
                "created_by": format!("freshet {}", env!("CARGO_PKG_VERSION")),
            }
        })
        .to_string()
    }

    /// Refuses a table freshet did not make for this view, or whose vectors are not the
    /// model's (dimension, or an HNSW index of another distance).
    async fn check_owned(&self, info: &IndexInfo, comment: Option<&str>) -> Result<(), StoreError> {
        let name = format!("table {}", quoted(&self.settings.schema, &info.collection));
        if self.owned_info(&info.collection, comment).is_none() {
            return Err(StoreError::NotOurs { name });
        }
        let row = sqlx::query(
            "SELECT format_type(a.atttypid, a.atttypmod) AS kind
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding' AND NOT a.attisdropped",
        )
        .bind(quoted(&self.settings.schema, &info.collection))
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_error)?;
        let kind: Option<String> = row.map(|r| r.get("kind"));
        let text_search: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attname = 'text_search' AND NOT a.attisdropped)",
        )
        .bind(quoted(&self.settings.schema, &info.collection))
        .fetch_one(&self.pool)
        .await
        .map_err(sql_error)?;
        let full_text = info.sparse == Some(SparseKind::FullText);
        if text_search != full_text {
            let layout = |with: bool| {
                if with {
                    "a text_search (tsvector) column for keyword queries".to_string()
                } else {
                    "no text_search column (dense vectors only)".to_string()
                }
            };
            return Err(StoreError::Mismatch {
                collection: name,
                existing: layout(text_search),
                wanted: layout(full_text),
            });
        }
        let wanted = format!("vector({})", info.dim);
        if kind.as_deref() != Some(wanted.as_str()) {
            return Err(StoreError::Mismatch {
                collection: name,
                existing: format!(
                    "an embedding column of type {}",
                    kind.as_deref().unwrap_or("(none)")
                ),
                wanted: format!("{wanted} for {}-dimensional cosine vectors", info.dim),
            });
        }
        let definitions: Vec<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 AND indexdef ILIKE '%USING hnsw%'",
        )
        .bind(&self.settings.schema)
        .bind(&info.collection)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error)?;
        if let Some(other) = definitions
            .iter()
            .find(|d| !d.contains("vector_cosine_ops"))
        {
            return Err(StoreError::Mismatch {
                collection: name,
                existing: format!("an HNSW index of another distance ({other})"),
                wanted: "vector_cosine_ops (cosine distance)".into(),
            });
        }
        Ok(())
    }

    async fn create(&self, info: &IndexInfo) -> Result<(), StoreError> {
        let schema = &self.settings.schema;
        let table = quoted(schema, &info.collection);
        let name = &info.collection;
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        // Two processes creating the same table at once: the second waits, then finds it.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("freshet:{schema}.{name}"))
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
        let full_text = info.sparse == Some(SparseKind::FullText);
        let text_search_column = if full_text {
            ",\n                    text_search tsvector GENERATED ALWAYS AS (to_tsvector('english', coalesce(payload->>'text', ''))) STORED"
        } else {
            ""
        };
        let mut statements = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    id uuid PRIMARY KEY,
                    embedding vector({dim}) NOT NULL,
                    payload jsonb NOT NULL,
                    source_id text GENERATED ALWAYS AS (payload->>'source_id') STORED,
                    doc_key text GENERATED ALWAYS AS (payload->>'doc_key') STORED,
                    chunk_hash text GENERATED ALWAYS AS (payload->>'chunk_hash') STORED{text_search_column}
                )",
                dim = info.dim
            ),
            format!("CREATE INDEX IF NOT EXISTS \"{name}_hnsw\" ON {table} USING hnsw (embedding vector_cosine_ops)"),
            format!("CREATE INDEX IF NOT EXISTS \"{name}_source_doc\" ON {table} (source_id, doc_key)"),
            format!("CREATE INDEX IF NOT EXISTS \"{name}_doc_key\" ON {table} (doc_key)"),
            format!("CREATE INDEX IF NOT EXISTS \"{name}_chunk_hash\" ON {table} (chunk_hash)"),
            format!("COMMENT ON TABLE {table} IS {}", literal(&self.marker_comment(info))),
        ];
        if full_text {
            statements.push(format!(
                "CREATE INDEX IF NOT EXISTS \"{name}_text_search\" ON {table} USING gin (text_search)"
            ));
        }
        // Only a table that is not there yet gets freshet's comment.
        let existing = sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
            .bind(&table)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql_error)?;
        if existing.is_none() {
            for statement in statements {
                sqlx::query(&statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_error)?;
            }
            tracing::info!(table = %table, target = %self.target, "created a pgvector table");
        }
        tx.commit().await.map_err(sql_error)
    }

    /// [`Catalog::open`], with the concrete store (benchmarks compare upsert methods).
    pub async fn open_table(&self, info: &IndexInfo) -> Result<PgvectorStore, StoreError> {
        // A name clash with the view applications query is refused before anything is
        // created.
        self.published().await?;
        let existing = match self.relation(&info.collection).await? {
            Some(existing) => Some(existing),
            None => {
                self.create(info).await?;
                self.relation(&info.collection).await?
            }
        };
        let (_, comment) = existing.ok_or_else(|| {
            StoreError::Operation(format!(
                "table {} vanished while opening it",
                info.collection
            ))
        })?;
        self.check_owned(info, comment.as_deref()).await?;
        Ok(self.store(info))
    }

    fn store(&self, info: &IndexInfo) -> PgvectorStore {
        PgvectorStore {
            pool: self.pool.clone(),
            table: quoted(&self.settings.schema, &info.collection),
            dim: info.dim,
            full_text: info.sparse == Some(SparseKind::FullText),
            ef_search: self.settings.ef_search as usize,
            batch_rows: self.settings.batch_rows,
        }
    }
}

#[async_trait]
impl Catalog for PgvectorCatalog {
    fn location(&self) -> String {
        format!("postgres://{}", self.target)
    }

    fn published_name(&self) -> String {
        format!(
            "view {} on {}",
            quoted(&self.settings.schema, self.view()),
            self.target
        )
    }

    fn sparse_kind(&self) -> SparseKind {
        SparseKind::FullText
    }

    fn collection_name(&self, model_id: &str, dim: usize, sparse: Option<SparseKind>) -> String {
        // Short and lower-case (PostgreSQL names stop at 63 bytes); the comment keeps
        // the model's full name. A dense-only table keeps the name it had before hybrid
        // retrieval.
        let hash = blake3::hash(model_slug(model_id, dim).as_bytes()).to_hex();
        match sparse {
            Some(_) => format!("{}__{}_fts", self.view(), &hash[..10]),
            None => format!("{}__{}", self.view(), &hash[..10]),
        }
    }

    async fn published(&self) -> Result<Option<IndexInfo>, StoreError> {
        let Some((kind, comment)) = self.relation(self.view()).await? else {
            return Ok(None);
        };
        let marker = marker(comment.as_deref());
        let info = marker.as_ref().filter(|_| kind == "v").and_then(|m| {
            let collection = m["collection"].as_str()?;
            (m["view"].as_str() == Some(self.view())).then(|| IndexInfo {
                collection: collection.to_string(),
                model_id: m["model_id"].as_str().unwrap_or_default().to_string(),
                dim: m["dim"].as_u64().unwrap_or_default() as usize,
                sparse: serde_json::from_value(m["sparse"].clone()).unwrap_or(None),
            })
        });
        match info {
            Some(info) => Ok(Some(info)),
            None => Err(StoreError::NotOurs {
                name: format!(
                    "{} {}",
                    if kind == "v" { "view" } else { "relation" },
                    quoted(&self.settings.schema, self.view())
                ),
            }),
        }
    }

    async fn open(&self, info: &IndexInfo) -> Result<Arc<dyn VectorStore>, StoreError> {
        Ok(Arc::new(self.open_table(info).await?))
    }

    async fn open_existing(
        &self,
        info: &IndexInfo,
    ) -> Result<Option<Arc<dyn VectorStore>>, StoreError> {
        let Some((_, comment)) = self.relation(&info.collection).await? else {
            return Ok(None);
        };
        self.check_owned(info, comment.as_deref()).await?;
        Ok(Some(Arc::new(self.store(info))))
    }

    async fn publish(&self, info: &IndexInfo) -> Result<(), StoreError> {
        let schema = &self.settings.schema;
        let view = quoted(schema, self.view());
        let table = quoted(schema, &info.collection);
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        self.lock_view(&mut tx).await?;
        // Checked inside the lock: the view is freshet's (or absent) when it is replaced.
        let current = self.published().await?;
        if current.as_ref().map(|c| &c.collection) != Some(&info.collection) {
            let comment = serde_json::json!({
                "freshet": {
                    "view": self.view(),
                    "collection": info.collection,
                    "model_id": info.model_id,
                    "dim": info.dim,
                    "sparse": info.sparse,
                }
            })
            .to_string();
            // Every table shows the same columns through the view (a dense-only one a
            // NULL text_search), so it can be replaced in place whatever it pointed at.
            let text_search = if info.sparse == Some(SparseKind::FullText) {
                "text_search"
            } else {
                "NULL::tsvector AS text_search"
            };
            // `embedding::vector` drops the dimension from the view's column type, so the
            // view can be replaced in place for any model: grants on it and views built
            // on it survive. A bounded wait for the lock: an application's long
            // transaction must not queue every other query behind the switch.
            for statement in [
                "SET LOCAL lock_timeout = '10s'".to_string(),
                format!(
                    "CREATE OR REPLACE VIEW {view} AS SELECT id, embedding::vector AS embedding, payload, source_id, doc_key, chunk_hash, {text_search} FROM {table}"
                ),
                format!("COMMENT ON VIEW {view} IS {}", literal(&comment)),
            ] {
                sqlx::query(&statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql_error)?;
            }
            tracing::info!(view = %view, table = %table, "view switched");
        }
        // Also after a switch that stopped before this step. Under the lock, so that a
        // table another process is publishing is not dropped under it.
        self.drop_others(&mut tx, info).await;
        tx.commit().await.map_err(sql_error)
    }
}

impl PgvectorCatalog {
    /// Serializes publishing (and dropping) for this view across processes.
    async fn lock_view(&self, tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("freshet:{}.{}", self.settings.schema, self.view()))
            .execute(tx)
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    /// Drops freshet's other tables for this view (previous models), best effort: a
    /// failure is logged, and the next publish tries again.
    async fn drop_others(&self, tx: &mut sqlx::PgConnection, info: &IndexInfo) {
        let schema = &self.settings.schema;
        let others: Result<Vec<(String, Option<String>)>, _> = sqlx::query_as(
            "SELECT c.relname::text, obj_description(c.oid, 'pg_class')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> $2
               AND starts_with(c.relname::text, $3)",
        )
        .bind(schema)
        .bind(&info.collection)
        .bind(format!("{}__", self.view()))
        .fetch_all(&mut *tx)
        .await;
        let others = match others {
            Ok(others) => others,
            Err(err) => {
                tracing::warn!(error = %err, "could not list previous tables to drop");
                return;
            }
        };
        for (name, comment) in others {
            if self.owned_info(&name, comment.as_deref()).is_none() {
                continue;
            }
            tracing::info!(table = %name, "dropping the table of a previous model");
            // A savepoint keeps one failed drop from aborting the transaction.
            let dropped = async {
                sqlx::query("SAVEPOINT drop_old").execute(&mut *tx).await?;
                let result =
                    sqlx::query(&format!("DROP TABLE IF EXISTS {}", quoted(schema, &name)))
                        .execute(&mut *tx)
                        .await;
                let end = if result.is_ok() {
                    "RELEASE SAVEPOINT drop_old"
                } else {
                    "ROLLBACK TO SAVEPOINT drop_old"
                };
                sqlx::query(end).execute(&mut *tx).await?;
                result.map(|_| ())
            }
            .await;
            if let Err(err) = dropped {
                tracing::warn!(table = %name, error = %err, "could not drop an old table");
            }
        }
    }
}

/// One model's table.
#[derive(Clone)]
pub struct PgvectorStore {
    pool: PgPool,
    /// Schema-qualified and quoted.
    table: String,
    dim: usize,
    /// Whether the table has the `text_search` column (keyword queries).
    full_text: bool,
    ef_search: usize,
    batch_rows: usize,
}

impl std::fmt::Debug for PgvectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgvectorStore")
            .field("table", &self.table)
            .finish()
    }
}

/// Appends ` AND <condition>` for each of the filter's conditions: indexed columns where
/// freshet keeps them, the payload's text value otherwise.
fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &Option<Filter>) {
    for condition in filter.iter().flat_map(|f| &f.conditions) {
        let (key, values) = match condition {
            Condition::Equals(key, value) => (key, vec![value.clone()]),
            Condition::AnyOf(key, values) => (key, values.clone()),
        };
        query.push(" AND ");
        if COLUMNS.contains(&key.as_str()) {
            query.push(key.as_str());
        } else {
            query.push("payload->>");
            query.push_bind(key.clone());
        }
        query.push(" = ANY(");
        query.push_bind(values);
        query.push(")");
    }
}

/// `(...) AS query(q)`: the text's lexemes under the `english` configuration, OR-ed into a
/// tsquery (quoted, so no lexeme is parsed as query syntax; no lexeme: matches nothing).
fn push_tsquery(sql: &mut QueryBuilder<'_, Postgres>, text: &str) {
    sql.push(
        r"(SELECT coalesce(string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', ' | '), '')::tsquery AS q FROM unnest(tsvector_to_array(to_tsvector('english', ",
    );
    sql.push_bind(text.to_string());
    sql.push("))) AS lexeme) AS query");
}

fn hits_of(rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<Hit>, StoreError> {
    rows.into_iter()
        .map(|row| {
            let payload: sqlx::types::Json<Payload> = row.try_get("payload").map_err(sql_error)?;
            Ok(Hit {
                id: row.try_get("id").map_err(sql_error)?,
                score: row.try_get("score").map_err(sql_error)?,
                payload: payload.0,
            })
        })
        .collect()
}

/// The rows of a COPY in text format: tab-separated, with `\`, tab, newline and carriage
/// return escaped.
fn copy_text(points: &[Point]) -> Vec<u8> {
    fn escape(out: &mut Vec<u8>, text: &str) {
        for byte in text.bytes() {
            match byte {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                other => out.push(other),
            }
        }
    }
    let mut out = Vec::new();
    for point in points {
        out.extend_from_slice(point.id.to_string().as_bytes());
        out.push(b'\t');
        out.push(b'[');
        for (i, x) in point.vector.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(x.to_string().as_bytes());
        }
        out.push(b']');
        out.push(b'\t');
        let payload = serde_json::to_string(&point.payload).expect("payload serializes");
        escape(&mut out, &payload);
        out.push(b'\n');
    }
    out
}

impl PgvectorStore {
    /// Writes `points` in one transaction with the given method (the trait's `upsert`
    /// uses [`UpsertMethod::FASTEST`]; benchmarks compare both).
    pub async fn upsert_with(
        &self,
        points: &[Point],
        method: UpsertMethod,
    ) -> Result<(), StoreError> {
        StoreError::check_points(&format!("table {}", self.table), self.dim, points)?;
        let mut tx = self.durable_transaction().await?;
        match method {
            UpsertMethod::UnnestInsert => {
                let statement = format!(
                    "INSERT INTO {} (id, embedding, payload)
                     SELECT u.id, u.embedding, u.payload::jsonb
                     FROM UNNEST($1::uuid[], $2::vector[], $3::text[]) AS u(id, embedding, payload)
                     ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, payload = EXCLUDED.payload",
                    self.table
                );
                for batch in points.chunks(self.batch_rows) {
                    let ids: Vec<PointId> = batch.iter().map(|p| p.id).collect();
                    let vectors: Vec<pgvector::Vector> = batch
                        .iter()
                        .map(|p| pgvector::Vector::from(p.vector.clone()))
                        .collect();
                    let payloads: Vec<String> = batch
                        .iter()
                        .map(|p| serde_json::to_string(&p.payload).expect("payload serializes"))
                        .collect();
                    sqlx::query(&statement)
                        .bind(ids)
                        .bind(vectors)
                        .bind(payloads)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql_error)?;
                }
            }
            UpsertMethod::CopyStaging => {
                sqlx::query(
                    "CREATE TEMPORARY TABLE IF NOT EXISTS freshet_staging (id uuid, embedding text, payload text) ON COMMIT DELETE ROWS",
                )
                .execute(&mut *tx)
                .await
                .map_err(sql_error)?;
                let mut copy = tx
                    .copy_in_raw("COPY freshet_staging (id, embedding, payload) FROM STDIN")
                    .await
                    .map_err(sql_error)?;
                copy.send(copy_text(points)).await.map_err(sql_error)?;
                copy.finish().await.map_err(sql_error)?;
                sqlx::query(&format!(
                    "INSERT INTO {} (id, embedding, payload)
                     SELECT id, embedding::vector, payload::jsonb FROM freshet_staging
                     ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, payload = EXCLUDED.payload",
                    self.table
                ))
                .execute(&mut *tx)
                .await
                .map_err(sql_error)?;
            }
        }
        tx.commit().await.map_err(sql_error)
    }

    /// A transaction whose commit returns only once it is durable, whatever the server's,
    /// database's or role's `synchronous_commit` says (the ledger commits right after).
    async fn durable_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
        Ok(tx)
    }

    /// Chunks ranked by full-text rank: the query's lexemes (stemmed by the `english`
    /// configuration, as the column is) OR-ed, so any term can match, as in BM25.
    async fn keyword(&self, query: &Query) -> Result<Vec<Hit>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new(
            "SELECT id, payload, ts_rank_cd(text_search, q)::real AS score FROM ",
        );
        sql.push(&self.table);
        sql.push(", ");
        push_tsquery(&mut sql, &query.text);
        sql.push(" WHERE text_search @@ q");
        push_filter(&mut sql, &query.filter);
        sql.push(" ORDER BY score DESC, id LIMIT ");
        sql.push_bind(query.k as i64);
        let rows = sql.build().fetch_all(&self.pool).await.map_err(sql_error)?;
        hits_of(rows)
    }

    /// Reciprocal rank fusion of the nearest vectors and the full-text ranking, each
    /// bringing `candidates` rows, in one statement (the SQL an application can copy).
    async fn hybrid(
        &self,
        vector: &pgvector::Vector,
        query: &Query,
    ) -> Result<Vec<Hit>, StoreError> {
        let candidates = query.prefetch_limit();
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        self.set_ef_search(&mut tx, candidates).await?;
        let mut sql = QueryBuilder::<Postgres>::new(
            "WITH dense AS (SELECT id, row_number() OVER (ORDER BY distance) AS rank FROM (SELECT id, embedding <=> ",
        );
        sql.push_bind(vector.clone());
        sql.push(" AS distance FROM ");
        sql.push(&self.table);
        sql.push(" WHERE TRUE");
        push_filter(&mut sql, &query.filter);
        sql.push(" ORDER BY distance LIMIT ");
        sql.push_bind(candidates as i64);
        sql.push(") d), keyword AS (SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank FROM (SELECT id, ts_rank_cd(text_search, q) AS score FROM ");
        sql.push(&self.table);
        sql.push(", ");
        push_tsquery(&mut sql, &query.text);
        sql.push(" WHERE text_search @@ q");
        push_filter(&mut sql, &query.filter);
        sql.push(" ORDER BY score DESC, id LIMIT ");
        sql.push_bind(candidates as i64);
        sql.push(") s), fused AS (SELECT id, sum(1.0 / (");
        sql.push_bind(query.rrf_k as i64);
        sql.push(" + rank)) AS score FROM (SELECT * FROM dense UNION ALL SELECT * FROM keyword) r GROUP BY id) SELECT t.id, t.payload, fused.score::real AS score FROM fused JOIN ");
        sql.push(&self.table);
        sql.push(" t ON t.id = fused.id ORDER BY score DESC, t.id LIMIT ");
        sql.push_bind(query.k as i64);
        let rows = sql.build().fetch_all(&mut *tx).await.map_err(sql_error)?;
        tx.commit().await.map_err(sql_error)?;
        hits_of(rows)
    }

    async fn nearest(
        &self,
        vector: &pgvector::Vector,
        k: usize,
        filter: &Option<Filter>,
        exact: bool,
    ) -> Result<Vec<Hit>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        let mut query = QueryBuilder::<Postgres>::new("");
        if exact {
            // The materialized CTE keeps the planner from the approximate index.
            query.push("WITH candidates AS MATERIALIZED (SELECT id, payload, embedding FROM ");
            query.push(&self.table);
            query.push(" WHERE TRUE");
            push_filter(&mut query, filter);
            query.push(") SELECT id, payload, (1 - (embedding <=> ");
            query.push_bind(vector.clone());
            query.push("))::real AS score FROM candidates ORDER BY embedding <=> ");
        } else {
            self.set_ef_search(&mut tx, k).await?;
            query.push("SELECT id, payload, (1 - (embedding <=> ");
            query.push_bind(vector.clone());
            query.push("))::real AS score FROM ");
            query.push(&self.table);
            query.push(" WHERE TRUE");
            push_filter(&mut query, filter);
            query.push(" ORDER BY embedding <=> ");
        }
        query.push_bind(vector.clone());
        query.push(" LIMIT ");
        query.push_bind(k as i64);
        let rows = query.build().fetch_all(&mut *tx).await.map_err(sql_error)?;
        tx.commit().await.map_err(sql_error)?;
        hits_of(rows)
    }

    /// Lets this transaction's HNSW scans return at least `rows` rows (pgvector caps it).
    async fn set_ef_search(
        &self,
        tx: &mut sqlx::PgConnection,
        rows: usize,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "SET LOCAL hnsw.ef_search = {}",
            self.ef_search.max(rows).min(MAX_EF_SEARCH)
        ))
        .execute(tx)
        .await
        .map_err(sql_error)?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for PgvectorStore {
    async fn ensure_collection(&self, dim: usize) -> Result<(), StoreError> {
        StoreError::check_dimension(&format!("table {}", self.table), self.dim, dim)
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        with_retry("upsert", ATTEMPTS, || {
            self.upsert_with(&points, UpsertMethod::FASTEST)
        })
        .await
    }

    async fn delete(&self, ids: Vec<PointId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let statement = format!("DELETE FROM {} WHERE id = ANY($1::uuid[])", self.table);
        with_retry("delete", ATTEMPTS, || async {
            let mut tx = self.durable_transaction().await?;
            sqlx::query(&statement)
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(sql_error)?;
            tx.commit().await.map_err(sql_error)
        })
        .await
    }

    async fn search(&self, query: &Query) -> Result<Vec<Hit>, StoreError> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
        if query.mode.uses_keywords() && !self.full_text {
            return Err(StoreError::no_keyword_side(
                &format!("table {}", self.table),
                query.mode,
            ));
        }
        let vector = pgvector::Vector::from(query.dense.clone());
        let (k, filter) = (query.k, &query.filter);
        with_retry("search", ATTEMPTS, || async {
            match query.mode {
                QueryMode::Dense => {
                    if k <= MAX_EF_SEARCH {
                        let hits = self.nearest(&vector, k, filter, false).await?;
                        if hits.len() == k {
                            return Ok(hits);
                        }
                    }
                    // The HNSW scan came back short (a selective filter, or k beyond what
                    // it can return): an exact scan returns k rows whenever k rows match.
                    self.nearest(&vector, k, filter, true).await
                }
                QueryMode::Sparse => self.keyword(query).await,
                QueryMode::Hybrid => self.hybrid(&vector, query).await,
            }
        })
        .await
    }

    async fn count(&self, filter: Option<Filter>) -> Result<usize, StoreError> {
        with_retry("count", ATTEMPTS, || async {
            let mut query = QueryBuilder::<Postgres>::new("SELECT count(*) FROM ");
            query.push(&self.table);
            query.push(" WHERE TRUE");
            push_filter(&mut query, &filter);
            let count: i64 = query
                .build_query_scalar()
                .fetch_one(&self.pool)
                .await
                .map_err(sql_error)?;
            Ok(count as usize)
        })
        .await
    }

    async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<Filter>,
        with_vectors: bool,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), StoreError> {
        let limit = limit.max(1);
        with_retry("scroll", ATTEMPTS, || async {
            let mut query = QueryBuilder::<Postgres>::new("SELECT id, payload");
            if with_vectors {
                query.push(", embedding");
            }
            query.push(" FROM ");
            query.push(&self.table);
            query.push(" WHERE TRUE");
            if let Some(offset) = offset {
                query.push(" AND id >= ");
                query.push_bind(offset);
            }
            push_filter(&mut query, &filter);
            // The primary key's order (uuid bytes, the order Qdrant scrolls in too).
            query.push(" ORDER BY id LIMIT ");
            query.push_bind((limit + 1) as i64);
            let rows = query
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(sql_error)?;
            let mut points = Vec::with_capacity(rows.len());
            for row in rows {
                let payload: sqlx::types::Json<Payload> =
                    row.try_get("payload").map_err(sql_error)?;
                let vector = if with_vectors {
                    let v: pgvector::Vector = row.try_get("embedding").map_err(sql_error)?;
                    Some(v.to_vec())
                } else {
                    None
                };
                points.push(StoredPoint {
                    id: row.try_get("id").map_err(sql_error)?,
                    payload: payload.0,
                    vector,
                });
            }
            let next = if points.len() > limit {
                points.pop().map(|p| p.id)
            } else {
                None
            };
            Ok((points, next))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Transient;

    #[test]
    fn copy_rows_escape_what_copy_text_format_treats_specially() {
        let mut payload = Payload::new();
        payload.insert("text".into(), serde_json::json!("a\tb\nc\\d"));
        let point = Point {
            id: uuid::Uuid::nil(),
            vector: vec![0.5, -1.0],
            sparse: None,
            payload,
        };
        let text = String::from_utf8(copy_text(&[point])).unwrap();
        // JSON escapes the tab and newline itself; the backslashes are doubled for COPY.
        assert_eq!(
            text,
            "00000000-0000-0000-0000-000000000000\t[0.5,-1]\t{\"text\":\"a\\\\tb\\\\nc\\\\\\\\d\"}\n"
        );
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn only_connection_and_conflict_errors_are_retried() {
        assert!(sql_error(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!sql_error(sqlx::Error::RowNotFound).is_transient());
    }
}
