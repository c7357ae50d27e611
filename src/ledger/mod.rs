//! The change-tracking ledger: per document what the index holds for it, per work unit its
//! scan state, and one row per run. One set of queries over sqlx's `Any` driver serves both
//! databases: SQLite in the data directory (one process, [`sqlite`]) and PostgreSQL shared
//! by workers ([`postgres`], where work units are leased).
//!
//! Invariant: the ledger never vouches for points the store lacks. Callers commit a
//! document's row only after its points were upserted and its stale points deleted; every
//! multi-row change here is one transaction, and a commit made under a unit's lease is
//! refused once another worker took the unit over ([`Fence`]).

mod lease;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

pub use freshet_connectors::Partition;
pub use lease::{Fence, Holder, Lease, Leases, LocalLeases, WorkerMode};

use crate::store::PointId;

/// Keys per `IN (...)` lookup; well under every database's bind-parameter limit.
pub const LOOKUP_BATCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocStatus {
    Indexed,
    Failed,
    Skipped,
    /// A write of the document's points is in flight (or was, when a run died): its points
    /// may be any of `point_ids` and `pending_point_ids`. The next sync redoes it.
    Pending,
    /// The source's data-quality checks set it aside (the reason says why); its last good
    /// points, if any, keep being served.
    Quarantined,
}

impl DocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocStatus::Indexed => "indexed",
            DocStatus::Failed => "failed",
            DocStatus::Skipped => "skipped",
            DocStatus::Pending => "pending",
            DocStatus::Quarantined => "quarantined",
        }
    }

    fn parse(s: &str) -> Result<Self, LedgerError> {
        match s {
            "indexed" => Ok(DocStatus::Indexed),
            "failed" => Ok(DocStatus::Failed),
            "skipped" => Ok(DocStatus::Skipped),
            "pending" => Ok(DocStatus::Pending),
            "quarantined" => Ok(DocStatus::Quarantined),
            other => Err(LedgerError::Corrupt(format!(
                "unknown document status `{other}`"
            ))),
        }
    }
}

/// One document's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocRecord {
    pub source_id: String,
    pub doc_key: String,
    pub version_hint: String,
    pub content_hash: Option<String>,
    pub fingerprint: String,
    pub status: DocStatus,
    pub reason: Option<String>,
    pub media_type: Option<String>,
    /// The collection `point_ids` live in.
    pub collection: String,
    pub point_ids: Vec<PointId>,
    /// Ids being written while `status` is `Pending`.
    pub pending_point_ids: Option<Vec<PointId>>,
    pub chunk_hashes: Vec<String>,
    pub decode_warning: Option<String>,
    pub first_indexed_at: Option<String>,
    pub updated_at: String,
    /// The document this one was carried in (an email's attachment names its message):
    /// the two are written, redone and removed together, and a scan reports the parent
    /// only.
    pub parent_key: Option<String>,
}

impl DocRecord {
    /// The key a scan reports for this row: its parent's for an attachment, its own
    /// otherwise. Partitions and repairs go by it.
    pub fn family_key(&self) -> &str {
        self.parent_key.as_deref().unwrap_or(&self.doc_key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("work unit `{unit}`: another worker took it over (this worker lost its lease: its connection to the ledger died or stalled past `lease_takeover_s`); nothing more is written for it here")]
    LeaseLost { unit: String },
    #[error("ledger database error: {0}; if this persists, check the disk and the ledger file")]
    Database(#[from] sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger holds unreadable data: {0}; `freshet verify --repair` rebuilds what it can")]
    Corrupt(String),
    #[error("ledger: {0}")]
    Setup(String),
}

impl LedgerError {
    pub fn is_transient(&self) -> bool {
        match self {
            LedgerError::Database(err) => {
                matches!(
                    err,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                ) || err.as_database_error().is_some_and(|db| {
                    // SQLite: a writer holds the file. PostgreSQL: connection, resources,
                    // shutdown, serialization, deadlock, lock timeout.
                    let code = db.code().unwrap_or_default();
                    db.message().contains("locked")
                        || db.message().contains("busy")
                        || ["08", "53", "57P"].iter().any(|c| code.starts_with(c))
                        || ["40001", "40P01", "55P03"].contains(&code.as_ref())
                })
            }
            _ => false,
        }
    }
}

/// The ledger file inside a data directory.
pub const SQLITE_FILE: &str = "ledger.sqlite";

/// Opens the configured ledger and the leases of its work units: a SQLite file in the data
/// directory, or a shared PostgreSQL schema (the only place that looks at the kind).
pub async fn open(config: &crate::Config) -> Result<(Ledger, Arc<dyn Leases>), LedgerError> {
    match &config.ledger.url_env {
        None => {
            let ledger = sqlite::open(&config.data_dir.join(SQLITE_FILE)).await?;
            Ok((ledger, Arc::new(LocalLeases::new())))
        }
        Some(url_env) => {
            let url = std::env::var(url_env).map_err(|_| {
                LedgerError::Setup(format!(
                    "the environment variable {url_env} (ledger.url_env: the PostgreSQL URL of the shared ledger) is not set"
                ))
            })?;
            let (ledger, leases) = postgres::open(&url, &config.ledger).await?;
            Ok((ledger, Arc::new(leases)))
        }
    }
}

/// Whether the configured ledger has been created (a shared one always counts: opening
/// it creates its schema).
pub fn exists(config: &crate::Config) -> bool {
    config.ledger.url_env.is_some() || config.data_dir.join(SQLITE_FILE).is_file()
}

/// Counts per source for `freshet status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceSummary {
    pub source_id: String,
    pub documents: i64,
    pub indexed: i64,
    pub failed: i64,
    pub skipped: i64,
    /// Documents whose write was interrupted; the next sync redoes them.
    pub pending: i64,
    /// Rows the source's data-quality checks set aside.
    pub quarantined: i64,
    pub chunks: i64,
}

/// A work unit's scan state (the unit id is the source id when a source is not
/// partitioned).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitState {
    pub unit: String,
    /// The collection its last full scan completed into.
    pub scanned_collection: Option<String>,
    /// When that scan began (Unix milliseconds).
    pub scan_started_ms: Option<i64>,
    /// When its last round finished (Unix milliseconds).
    pub last_round_ms: Option<i64>,
    /// How long the oldest change of its last watched round waited to be indexed.
    pub lag_ms: Option<i64>,
}

/// One run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    pub sources: Vec<String>,
    pub stats: Option<serde_json::Value>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    /// Where the ledger is, for messages and `status` (never a secret).
    location: String,
}

/// Run history kept in the ledger (a watcher records a run per batch of changes).
pub const KEPT_RUNS: i64 = 10_000;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The `[lo, hi)` key-hash range of a partition (every hash when `None`).
fn hash_bounds(partition: Option<Partition>) -> (i64, i64) {
    partition.map_or((0, i64::MAX), |p| p.hash_range())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ledger {
    pub(crate) fn new(pool: AnyPool, location: String) -> Self {
        Self { pool, location }
    }

    /// Where the ledger is (a file, or `host:port/db` and schema).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Fills the key hash of rows written before the ledger stored it.
    pub(crate) async fn backfill_key_hashes(&self) -> Result<(), LedgerError> {
        loop {
            let rows = sqlx::query(
                "SELECT source_id, doc_key FROM documents WHERE key_hash IS NULL LIMIT 1000",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut tx = self.pool.begin().await?;
            for row in &rows {
                let source_id: String = row.try_get("source_id")?;
                let doc_key: String = row.try_get("doc_key")?;
                sqlx::query(
                    "UPDATE documents SET key_hash = $1 WHERE source_id = $2 AND doc_key = $3",
                )
                .bind(Partition::key_hash(&doc_key))
                .bind(&source_id)
                .bind(&doc_key)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }

    /// The rows of these keys that exist.
    pub async fn lookup(
        &self,
        source_id: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, DocRecord>, LedgerError> {
        let rows = self.rows_where_in("doc_key", source_id, keys).await?;
        Ok(rows.into_iter().map(|r| (r.doc_key.clone(), r)).collect())
    }

    /// The rows of the documents carried inside these (an email's attachments), by parent.
    pub async fn children(
        &self,
        source_id: &str,
        parents: &[&str],
    ) -> Result<HashMap<String, Vec<DocRecord>>, LedgerError> {
        let mut found: HashMap<String, Vec<DocRecord>> = HashMap::new();
        for record in self.rows_where_in("parent_key", source_id, parents).await? {
            let parent = record.parent_key.clone().unwrap_or_default();
            found.entry(parent).or_default().push(record);
        }
        Ok(found)
    }

    /// A source's rows whose `column` (a key column) is one of `values`, in key order,
    /// looked up `LOOKUP_BATCH` at a time.
    async fn rows_where_in(
        &self,
        column: &str,
        source_id: &str,
        values: &[&str],
    ) -> Result<Vec<DocRecord>, LedgerError> {
        let mut found = Vec::with_capacity(values.len());
        for batch in values.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "SELECT * FROM documents WHERE source_id = $1 AND {column} IN ({})
                 ORDER BY doc_key",
                placeholders(2, batch.len())
            );
            let mut query = sqlx::query(&sql).bind(source_id);
            for value in batch {
                query = query.bind(*value);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(record_from_row(&row)?);
            }
        }
        Ok(found)
    }

    pub async fn get(&self, source_id: &str, key: &str) -> Result<Option<DocRecord>, LedgerError> {
        Ok(self.lookup(source_id, &[key]).await?.remove(key))
    }

    /// Writes these rows (insert or replace) in one transaction.
    pub async fn commit(&self, records: &[DocRecord]) -> Result<(), LedgerError> {
        self.commit_fenced(records, None).await
    }

    /// Writes these rows in one transaction that first checks `fence`: refused with
    /// [`LedgerError::LeaseLost`] when another worker took the unit over.
    pub async fn commit_fenced(
        &self,
        records: &[DocRecord],
        fence: Option<&Fence>,
    ) -> Result<(), LedgerError> {
        self.commit_and_remove_fenced(records, &[], fence).await
    }

    /// Writes these rows and removes the rows of `removed` (source id, key) in one
    /// transaction checked against `fence`: a document and the attachments it no longer
    /// carries change together.
    pub async fn commit_and_remove_fenced(
        &self,
        records: &[DocRecord],
        removed: &[(String, String)],
        fence: Option<&Fence>,
    ) -> Result<(), LedgerError> {
        if records.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            fence.check_in(&mut tx).await?;
        }
        for r in records {
            let point_ids = serde_json::to_string(&r.point_ids).expect("uuids serialize to JSON");
            let chunk_hashes =
                serde_json::to_string(&r.chunk_hashes).expect("strings serialize to JSON");
            let pending = r
                .pending_point_ids
                .as_ref()
                .map(|ids| serde_json::to_string(ids).expect("uuids serialize to JSON"));
            sqlx::query(
                "INSERT INTO documents (source_id, doc_key, version_hint, content_hash, fingerprint,
                     status, reason, media_type, chunk_count, collection, point_ids,
                     pending_point_ids, chunk_hashes, decode_warning, first_indexed_at, updated_at,
                     key_hash, parent_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17, $18)
                 ON CONFLICT (source_id, doc_key) DO UPDATE SET
                     version_hint = excluded.version_hint,
                     content_hash = excluded.content_hash,
                     fingerprint = excluded.fingerprint,
                     status = excluded.status,
                     reason = excluded.reason,
                     media_type = excluded.media_type,
                     chunk_count = excluded.chunk_count,
                     collection = excluded.collection,
                     point_ids = excluded.point_ids,
                     pending_point_ids = excluded.pending_point_ids,
                     chunk_hashes = excluded.chunk_hashes,
                     decode_warning = excluded.decode_warning,
                     first_indexed_at = excluded.first_indexed_at,
                     updated_at = excluded.updated_at,
                     key_hash = excluded.key_hash,
                     parent_key = excluded.parent_key",
            )
            .bind(&r.source_id)
            .bind(&r.doc_key)
            .bind(&r.version_hint)
            .bind(&r.content_hash)
            .bind(&r.fingerprint)
            .bind(r.status.as_str())
            .bind(&r.reason)
            .bind(&r.media_type)
            .bind(r.point_ids.len() as i64)
            .bind(&r.collection)
            .bind(point_ids)
            .bind(pending)
            .bind(chunk_hashes)
            .bind(&r.decode_warning)
            .bind(&r.first_indexed_at)
            .bind(&r.updated_at)
            .bind(Partition::key_hash(r.family_key()))
            .bind(&r.parent_key)
            .execute(&mut *tx)
            .await?;
        }
        for (source_id, key) in removed {
            sqlx::query("DELETE FROM documents WHERE source_id = $1 AND doc_key = $2")
                .bind(source_id)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes these documents' rows in one transaction.
    pub async fn remove(&self, source_id: &str, keys: &[String]) -> Result<(), LedgerError> {
        self.remove_fenced(source_id, keys, None).await
    }

    /// Removes these documents' rows in one transaction checked against `fence`.
    pub async fn remove_fenced(
        &self,
        source_id: &str,
        keys: &[String],
        fence: Option<&Fence>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            fence.check_in(&mut tx).await?;
        }
        for batch in keys.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "DELETE FROM documents WHERE source_id = $1 AND doc_key IN ({})",
                placeholders(2, batch.len())
            );
            let mut query = sqlx::query(&sql).bind(source_id);
            for key in batch {
                query = query.bind(key);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One page of a source's keys of documents a scan reports (not the attachments
    /// carried inside them) in key order, after `after`, from the key range that
    /// holds `scope` and everything below `scope/` (all keys for the empty scope), in
    /// `partition` when given. The range may also hold neighbours such as `scope.md`;
    /// callers filter with `in_scope`.
    pub async fn keys_page_in(
        &self,
        source_id: &str,
        scope: &str,
        partition: Option<Partition>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, LedgerError> {
        // Keys compare bytewise: every key below `scope/` sorts before `scope0`. The
        // empty scope has no upper bound.
        let start = match after {
            Some(after) if after >= scope => after,
            _ => "",
        };
        let (lo, hi) = hash_bounds(partition);
        let bounded = !scope.is_empty();
        let rows = sqlx::query(
            "SELECT doc_key FROM documents
             WHERE source_id = $1 AND doc_key >= $2 AND ($3 = 0 OR doc_key < $4)
               AND doc_key > $5 AND key_hash >= $6 AND key_hash < $7 AND parent_key IS NULL
             ORDER BY doc_key LIMIT $8",
        )
        .bind(source_id)
        .bind(scope)
        .bind(i64::from(bounded))
        .bind(format!("{scope}0"))
        .bind(start)
        .bind(lo)
        .bind(hi)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("doc_key").map_err(Into::into))
            .collect()
    }

    /// One page of a source's rows in key order, after `after` (for verify and export).
    pub async fn records_page(
        &self,
        source_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocRecord>, LedgerError> {
        self.page("*", source_id, after, limit)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
    }

    /// Keyset pagination over a source's rows; `columns` keeps the sweep from reading
    /// point id lists it does not need.
    async fn page(
        &self,
        columns: &str,
        source_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AnyRow>, LedgerError> {
        let sql = format!(
            "SELECT {columns} FROM documents WHERE source_id = $1 AND doc_key > $2
             ORDER BY doc_key LIMIT $3"
        );
        Ok(sqlx::query(&sql)
            .bind(source_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every source id that has rows.
    pub async fn source_ids(&self) -> Result<Vec<String>, LedgerError> {
        let rows = sqlx::query("SELECT DISTINCT source_id FROM documents ORDER BY source_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("source_id").map_err(Into::into))
            .collect()
    }

    /// Makes the next sync redo these documents from scratch (read, extract, embed, write)
    /// instead of trusting their version hint and content hash.
    pub async fn invalidate(&self, source_id: &str, keys: &[String]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        for key in keys {
            invalidate_family(&mut tx, source_id, key).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Documents a scan reports (attachments carried inside them not counted) of a
    /// source, or of one partition of it.
    pub async fn document_count(
        &self,
        source_id: &str,
        partition: Option<Partition>,
    ) -> Result<i64, LedgerError> {
        let (lo, hi) = hash_bounds(partition);
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM documents
             WHERE source_id = $1 AND key_hash >= $2 AND key_hash < $3 AND parent_key IS NULL",
        )
        .bind(source_id)
        .bind(lo)
        .bind(hi)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// Documents that failed, with reasons, for reports.
    pub async fn failures(
        &self,
        source_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocRecord>, LedgerError> {
        let rows = sqlx::query(
            "SELECT * FROM documents WHERE status IN ('failed', 'quarantined')
               AND ($1 IS NULL OR source_id = $2)
             ORDER BY source_id, doc_key LIMIT $3",
        )
        .bind(source_id)
        .bind(source_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    pub async fn summaries(&self) -> Result<Vec<SourceSummary>, LedgerError> {
        let rows = sqlx::query(
            "SELECT source_id,
                    COUNT(*) AS documents,
                    CAST(SUM(CASE WHEN status = 'indexed' THEN 1 ELSE 0 END) AS BIGINT) AS indexed,
                    CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed,
                    CAST(SUM(CASE WHEN status = 'skipped' THEN 1 ELSE 0 END) AS BIGINT) AS skipped,
                    CAST(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS BIGINT) AS pending,
                    CAST(SUM(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END) AS BIGINT)
                        AS quarantined,
                    CAST(SUM(chunk_count) AS BIGINT) AS chunks
             FROM documents GROUP BY source_id ORDER BY source_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SourceSummary {
                    source_id: row.try_get("source_id")?,
                    documents: row.try_get("documents")?,
                    indexed: row.try_get::<Option<i64>, _>("indexed")?.unwrap_or(0),
                    failed: row.try_get::<Option<i64>, _>("failed")?.unwrap_or(0),
                    skipped: row.try_get::<Option<i64>, _>("skipped")?.unwrap_or(0),
                    pending: row.try_get::<Option<i64>, _>("pending")?.unwrap_or(0),
                    quarantined: row.try_get::<Option<i64>, _>("quarantined")?.unwrap_or(0),
                    chunks: row.try_get::<Option<i64>, _>("chunks")?.unwrap_or(0),
                })
            })
            .collect()
    }

    /// The committed cursor of a work unit (`unit`: a source, or one `partition` of it),
    /// unless some of its rows are not current (an interrupted write, other pipeline
    /// settings, an invalidated row): then `None`, so that the next scan reads every row
    /// again. `fingerprints` are the current ones (a row is written under one of them,
    /// depending on its type).
    pub async fn cursor(
        &self,
        unit: &str,
        source_id: &str,
        partition: Option<Partition>,
        fingerprints: &[String],
    ) -> Result<Option<String>, LedgerError> {
        let (lo, hi) = hash_bounds(partition);
        let sql = format!(
            "SELECT COUNT(*) AS n FROM documents
             WHERE source_id = $1 AND key_hash >= $2 AND key_hash < $3
               AND (status = 'pending' OR fingerprint NOT IN ({}) OR version_hint = '')",
            placeholders(4, fingerprints.len())
        );
        let mut query = sqlx::query(&sql).bind(source_id).bind(lo).bind(hi);
        for fingerprint in fingerprints {
            query = query.bind(fingerprint);
        }
        let stale: i64 = query.fetch_one(&self.pool).await?.try_get("n")?;
        if stale > 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT cursor FROM source_state WHERE source_id = $1")
            .bind(unit)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get("cursor")?,
            None => None,
        })
    }

    /// Commits a unit's cursor (after the scan's round completed), or clears it.
    pub async fn set_cursor(
        &self,
        unit: &str,
        cursor: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            fence.check_in(&mut tx).await?;
        }
        sqlx::query(
            "INSERT INTO source_state (source_id, cursor) VALUES ($1, $2)
             ON CONFLICT (source_id) DO UPDATE SET cursor = excluded.cursor",
        )
        .bind(unit)
        .bind(cursor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that a full scan of `unit`, begun at `started_ms` (Unix milliseconds),
    /// completed into `collection`.
    pub async fn mark_unit_scanned(
        &self,
        unit: &str,
        collection: &str,
        started_ms: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO source_state (source_id, scanned_collection, scan_started_ms)
             VALUES ($1, $2, $3)
             ON CONFLICT (source_id) DO UPDATE SET
                 scanned_collection = excluded.scanned_collection,
                 scan_started_ms = excluded.scan_started_ms",
        )
        .bind(unit)
        .bind(collection)
        .bind(started_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a full scan of `unit` into `collection` began at or after `since_ms`
    /// (another worker synced it during this run).
    pub async fn unit_scanned_since(
        &self,
        unit: &str,
        collection: &str,
        since_ms: i64,
    ) -> Result<bool, LedgerError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM source_state
             WHERE source_id = $1 AND scanned_collection = $2 AND scan_started_ms >= $3",
        )
        .bind(unit)
        .bind(collection)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// Whether every one of `units` completed a full scan into `collection`.
    pub async fn units_scanned_into(
        &self,
        units: &[String],
        collection: &str,
    ) -> Result<bool, LedgerError> {
        for batch in units.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "SELECT COUNT(*) AS n FROM source_state
                 WHERE scanned_collection = $1 AND source_id IN ({})",
                placeholders(2, batch.len())
            );
            let mut query = sqlx::query(&sql).bind(collection);
            for unit in batch {
                query = query.bind(unit);
            }
            let n: i64 = query.fetch_one(&self.pool).await?.try_get("n")?;
            if n < batch.len() as i64 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records a finished round of a unit: when, and how long its oldest change waited.
    pub async fn record_unit_round(
        &self,
        unit: &str,
        lag_ms: Option<i64>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO source_state (source_id, last_round_ms, lag_ms) VALUES ($1, $2, $3)
             ON CONFLICT (source_id) DO UPDATE SET
                 last_round_ms = excluded.last_round_ms,
                 lag_ms = COALESCE(excluded.lag_ms, source_state.lag_ms)",
        )
        .bind(unit)
        .bind(now_ms())
        .bind(lag_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every unit's scan state, for `status`.
    pub async fn unit_states(&self) -> Result<Vec<UnitState>, LedgerError> {
        let rows = sqlx::query(
            "SELECT source_id, scanned_collection, scan_started_ms, last_round_ms, lag_ms
             FROM source_state ORDER BY source_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UnitState {
                    unit: row.try_get("source_id")?,
                    scanned_collection: row.try_get("scanned_collection")?,
                    scan_started_ms: row.try_get("scan_started_ms")?,
                    last_round_ms: row.try_get("last_round_ms")?,
                    lag_ms: row.try_get("lag_ms")?,
                })
            })
            .collect()
    }

    /// Notes documents a worker may have written after it lost their unit, for the next
    /// holder to re-index (not fenced: the former holder is the one writing it).
    pub async fn note_repairs(&self, source_id: &str, keys: &[String]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        for key in keys {
            sqlx::query(
                "INSERT INTO repairs (source_id, doc_key, key_hash, noted_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (source_id, doc_key) DO NOTHING",
            )
            .bind(source_id)
            .bind(key)
            .bind(Partition::key_hash(key))
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes the repairs noted in a unit: their rows are invalidated (the next scan
    /// re-indexes them) and the notes removed, in one transaction. Returns how many.
    pub async fn take_repairs(
        &self,
        source_id: &str,
        partition: Option<Partition>,
    ) -> Result<u64, LedgerError> {
        let (lo, hi) = hash_bounds(partition);
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT doc_key FROM repairs WHERE source_id = $1 AND key_hash >= $2 AND key_hash < $3",
        )
        .bind(source_id)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let key: String = row.try_get("doc_key")?;
            invalidate_family(&mut tx, source_id, &key).await?;
            sqlx::query("DELETE FROM repairs WHERE source_id = $1 AND doc_key = $2")
                .bind(source_id)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Records the latest data-quality check report of a source.
    pub async fn record_check(
        &self,
        source_id: &str,
        report: &serde_json::Value,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO source_state (source_id, check_report, checked_at) VALUES ($1, $2, $3)
             ON CONFLICT (source_id) DO UPDATE SET check_report = excluded.check_report,
                                                   checked_at = excluded.checked_at",
        )
        .bind(source_id)
        .bind(report.to_string())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest check report of every source that has one: (source, when, report).
    pub async fn checks(&self) -> Result<Vec<(String, String, serde_json::Value)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT source_id, checked_at, check_report FROM source_state
             WHERE check_report IS NOT NULL ORDER BY source_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let report: String = row.try_get("check_report")?;
                Ok((
                    row.try_get("source_id")?,
                    row.try_get("checked_at")?,
                    serde_json::from_str(&report)
                        .map_err(|e| LedgerError::Corrupt(format!("check report: {e}")))?,
                ))
            })
            .collect()
    }

    /// Records the start of a run by `worker`; returns its id. Runs left `running` by
    /// workers that are not in `live_workers` belonged to processes that died, and those
    /// of `worker` itself to an earlier run that stopped.
    pub async fn start_run(
        &self,
        sources: &[String],
        worker: &str,
        live_workers: &[String],
    ) -> Result<i64, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT id, worker FROM runs WHERE status = 'running'")
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let owner: Option<String> = row.try_get("worker")?;
            // Another live worker's run goes on; this worker's own earlier run stopped
            // (a run that failed or was interrupted in this process), as did any run of
            // a worker that is gone.
            if owner.is_some_and(|w| w != worker && live_workers.contains(&w)) {
                continue;
            }
            sqlx::query("UPDATE runs SET status = 'interrupted' WHERE id = $1")
                .bind(row.try_get::<i64, _>("id")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.insert_run(sources, &now(), None, "running", None, None, worker)
            .await
    }

    /// When the run in progress began that this worker joins: the earliest start among
    /// runs still `running` on live workers (syncs started together on several hosts are
    /// one run), or `fallback` when there is none earlier.
    pub async fn joined_run_start(
        &self,
        live_workers: &[String],
        fallback_ms: i64,
    ) -> Result<i64, LedgerError> {
        let rows = sqlx::query("SELECT worker, started_at FROM runs WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?;
        let mut start = fallback_ms;
        for row in rows {
            let worker: Option<String> = row.try_get("worker")?;
            if !worker.is_some_and(|w| live_workers.contains(&w)) {
                continue;
            }
            let started: String = row.try_get("started_at")?;
            if let Ok(at) = time::OffsetDateTime::parse(
                &started,
                &time::format_description::well_known::Rfc3339,
            ) {
                start = start.min((at.unix_timestamp_nanos() / 1_000_000) as i64);
            }
        }
        Ok(start)
    }

    /// Inserts a run under the next free id (workers sharing a ledger may race for one:
    /// the loser takes the next).
    #[allow(clippy::too_many_arguments)]
    async fn insert_run(
        &self,
        sources: &[String],
        started_at: &str,
        finished_at: Option<&str>,
        status: &str,
        stats: Option<String>,
        error: Option<&str>,
        worker: &str,
    ) -> Result<i64, LedgerError> {
        let sources = serde_json::to_string(sources).expect("strings serialize");
        loop {
            // One statement, so SQLite never has to upgrade a read transaction to a write
            // one while the pipeline commits (it answers that with "database is locked").
            let row = sqlx::query(
                "INSERT INTO runs (id, started_at, finished_at, status, sources, stats, error, worker)
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM runs
                 -- SQLite parses an upsert after a SELECT only when it has a WHERE.
                 WHERE TRUE
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id",
            )
            .bind(started_at)
            .bind(finished_at)
            .bind(status)
            .bind(&sources)
            .bind(stats.clone())
            .bind(error)
            .bind(worker)
            .fetch_optional(&self.pool)
            .await;
            match row {
                Ok(Some(row)) => return Ok(row.try_get("id")?),
                Ok(None) => continue,
                // Two PostgreSQL sessions inserting the same new id: the second one
                // waits for the first and then fails on the key; take the next id.
                Err(err) if is_unique_violation(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Records a run that already happened (a watch round), keeping the newest
    /// [`KEPT_RUNS`] runs.
    pub async fn record_run(
        &self,
        sources: &[String],
        started_at: &str,
        status: &str,
        stats: &serde_json::Value,
        error: Option<&str>,
        worker: &str,
    ) -> Result<i64, LedgerError> {
        let id = self
            .insert_run(
                sources,
                started_at,
                Some(&now()),
                status,
                Some(stats.to_string()),
                error,
                worker,
            )
            .await?;
        sqlx::query("DELETE FROM runs WHERE id <= $1")
            .bind(id - KEPT_RUNS)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn finish_run(
        &self,
        id: i64,
        status: &str,
        stats: &serde_json::Value,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE runs SET finished_at = $1, status = $2, stats = $3, error = $4 WHERE id = $5",
        )
        .bind(now())
        .bind(status)
        .bind(stats.to_string())
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The most recent runs, newest first.
    pub async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, LedgerError> {
        let rows = sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT $1")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let sources: String = row.try_get("sources")?;
                let stats: Option<String> = row.try_get("stats")?;
                Ok(RunRecord {
                    id: row.try_get("id")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    status: row.try_get("status")?,
                    sources: serde_json::from_str(&sources)
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                    stats: stats
                        .map(|s| serde_json::from_str(&s))
                        .transpose()
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    /// Records a collection this ledger writes into (once; later calls change nothing).
    pub async fn note_collection(
        &self,
        name: &str,
        model_id: &str,
        dim: usize,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO collections (name, model_id, dim, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(model_id)
        .bind(dim as i64)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes every document recorded with points in `name` read and re-indexed by the next
    /// sync (the collection was found empty: recreated on a new server, or dropped), and
    /// the message of every such attachment, which is what rewrites it. Returns how many
    /// rows that affects.
    pub async fn invalidate_collection(&self, name: &str) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "UPDATE documents SET version_hint = '', content_hash = NULL
             WHERE (collection = $1 AND point_ids <> '[]')
                OR EXISTS (SELECT 1 FROM documents c
                           WHERE c.source_id = documents.source_id
                             AND c.parent_key = documents.doc_key
                             AND c.collection = $2 AND c.point_ids <> '[]')",
        )
        .bind(name)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records that a sync of every source completed into `name` (the first time only).
    pub async fn complete_collection(&self, name: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE collections SET completed_at = $1 WHERE name = $2 AND completed_at IS NULL",
        )
        .bind(now())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When a sync of every source first completed into `name`: `None` while it is
    /// partial. A collection the ledger never noted (indexes built before it noted them)
    /// counts as complete.
    pub async fn collection_completed_at(&self, name: &str) -> Result<Option<String>, LedgerError> {
        let row = sqlx::query("SELECT completed_at FROM collections WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<String>, _>("completed_at")?,
            None => Some(String::new()),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes the next sync redo a document: the row itself and, for an attachment, its
/// parent, which is what a scan reports and what rewrites the attachment.
async fn invalidate_family(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    source_id: &str,
    key: &str,
) -> Result<(), LedgerError> {
    sqlx::query(
        "UPDATE documents SET version_hint = '', content_hash = NULL
         WHERE source_id = $1 AND (doc_key = $2 OR doc_key IN
             (SELECT parent_key FROM documents WHERE source_id = $3 AND doc_key = $4))",
    )
    .bind(source_id)
    .bind(key)
    .bind(source_id)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn record_from_row(row: &AnyRow) -> Result<DocRecord, LedgerError> {
    let point_ids: String = row.try_get("point_ids")?;
    let pending: Option<String> = row.try_get("pending_point_ids")?;
    let chunk_hashes: String = row.try_get("chunk_hashes")?;
    let status: String = row.try_get("status")?;
    Ok(DocRecord {
        source_id: row.try_get("source_id")?,
        doc_key: row.try_get("doc_key")?,
        version_hint: row.try_get("version_hint")?,
        content_hash: row.try_get("content_hash")?,
        fingerprint: row.try_get("fingerprint")?,
        status: DocStatus::parse(&status)?,
        reason: row.try_get("reason")?,
        media_type: row.try_get("media_type")?,
        collection: row.try_get("collection")?,
        point_ids: serde_json::from_str(&point_ids)
            .map_err(|e| LedgerError::Corrupt(format!("point_ids: {e}")))?,
        pending_point_ids: pending
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| LedgerError::Corrupt(format!("pending_point_ids: {e}")))?,
        chunk_hashes: serde_json::from_str(&chunk_hashes)
            .map_err(|e| LedgerError::Corrupt(format!("chunk_hashes: {e}")))?,
        decode_warning: row.try_get("decode_warning")?,
        first_indexed_at: row.try_get("first_indexed_at")?,
        updated_at: row.try_get("updated_at")?,
        parent_key: row.try_get("parent_key")?,
    })
}
