//! The change-tracking ledger (SQLite through sqlx): per document what the index holds for
//! it, and one row per run.
//!
//! Invariant: the ledger never vouches for points the store lacks. Callers commit a
//! document's row only after its points were upserted and its stale points deleted; every
//! multi-row change here is one transaction.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

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
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}; if this persists, check the disk and the ledger file")]
    Database(#[from] sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger holds unreadable data: {0}; `freshet verify --repair` rebuilds what it can")]
    Corrupt(String),
}

impl LedgerError {
    pub fn is_transient(&self) -> bool {
        match self {
            LedgerError::Database(err) => {
                matches!(
                    err,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                ) || err.as_database_error().is_some_and(|db| {
                    db.message().contains("locked") || db.message().contains("busy")
                })
            }
            _ => false,
        }
    }
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
    pool: SqlitePool,
}

/// Run history kept in the ledger (a watcher records a run per batch of changes).
pub const KEPT_RUNS: i64 = 10_000;

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
    /// Opens (creating if needed) the SQLite ledger and applies migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, LedgerError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| LedgerError::Database(err.into()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed ledger row survives power loss, so it cannot fall behind
            // store writes that were already synced.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The rows of these keys that exist.
    pub async fn lookup(
        &self,
        source_id: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, DocRecord>, LedgerError> {
        let mut found = HashMap::with_capacity(keys.len());
        for batch in keys.chunks(LOOKUP_BATCH) {
            let sql = format!(
                "SELECT * FROM documents WHERE source_id = $1 AND doc_key IN ({})",
                placeholders(2, batch.len())
            );
            let mut query = sqlx::query(&sql).bind(source_id);
            for key in batch {
                query = query.bind(*key);
            }
            for row in query.fetch_all(&self.pool).await? {
                let record = record_from_row(&row)?;
                found.insert(record.doc_key.clone(), record);
            }
        }
        Ok(found)
    }

    pub async fn get(&self, source_id: &str, key: &str) -> Result<Option<DocRecord>, LedgerError> {
        Ok(self.lookup(source_id, &[key]).await?.remove(key))
    }

    /// Writes these rows (insert or replace) in one transaction.
    pub async fn commit(&self, records: &[DocRecord]) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
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
                     pending_point_ids, chunk_hashes, decode_warning, first_indexed_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
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
                     updated_at = excluded.updated_at",
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes these documents' rows in one transaction.
    pub async fn remove(&self, source_id: &str, keys: &[String]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
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

    /// One page of a source's document keys in key order, after `after`.
    pub async fn keys_page(
        &self,
        source_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, LedgerError> {
        self.page("doc_key", source_id, after, limit)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("doc_key").map_err(Into::into))
            .collect()
    }

    /// One page of a source's keys in key order, after `after`, from the key range that
    /// holds `scope` and everything below `scope/` (all keys for the empty scope). The
    /// range may also hold neighbours such as `scope.md`; callers filter with `in_scope`.
    pub async fn keys_page_in(
        &self,
        source_id: &str,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, LedgerError> {
        if scope.is_empty() {
            return self.keys_page(source_id, after, limit).await;
        }
        // Keys compare bytewise: every key below `scope/` sorts before `scope0`.
        let end = format!("{scope}0");
        let start = match after {
            Some(after) if after >= scope => after,
            _ => "",
        };
        let rows = sqlx::query(
            "SELECT doc_key FROM documents
             WHERE source_id = $1 AND doc_key >= $2 AND doc_key < $3 AND doc_key > $4
             ORDER BY doc_key LIMIT $5",
        )
        .bind(source_id)
        .bind(scope)
        .bind(&end)
        .bind(start)
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
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, LedgerError> {
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
            sqlx::query(
                "UPDATE documents SET version_hint = '', content_hash = NULL
                 WHERE source_id = $1 AND doc_key = $2",
            )
            .bind(source_id)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn document_count(&self, source_id: &str) -> Result<i64, LedgerError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM documents WHERE source_id = $1")
            .bind(source_id)
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
                    SUM(CASE WHEN status = 'indexed' THEN 1 ELSE 0 END) AS indexed,
                    SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
                    SUM(CASE WHEN status = 'skipped' THEN 1 ELSE 0 END) AS skipped,
                    SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending,
                    SUM(CASE WHEN status = 'quarantined' THEN 1 ELSE 0 END) AS quarantined,
                    SUM(chunk_count) AS chunks
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

    /// The committed cursor of a source, unless some of its rows are not current (an
    /// interrupted write, other pipeline settings, an invalidated row): then `None`, so
    /// that the next scan reads every row again.
    pub async fn cursor(
        &self,
        source_id: &str,
        fingerprint: &str,
    ) -> Result<Option<String>, LedgerError> {
        let stale: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM documents
             WHERE source_id = $1 AND (status = 'pending' OR fingerprint <> $2 OR version_hint = '')",
        )
        .bind(source_id)
        .bind(fingerprint)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        if stale > 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT cursor FROM source_state WHERE source_id = $1")
            .bind(source_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get("cursor")?,
            None => None,
        })
    }

    /// Commits a source's cursor (after the scan's round completed), or clears it.
    pub async fn set_cursor(
        &self,
        source_id: &str,
        cursor: Option<&str>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO source_state (source_id, cursor) VALUES ($1, $2)
             ON CONFLICT (source_id) DO UPDATE SET cursor = excluded.cursor",
        )
        .bind(source_id)
        .bind(cursor)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// Records the start of a run; returns its id.
    pub async fn start_run(&self, sources: &[String]) -> Result<i64, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // A run left `running` belongs to a process that died.
        sqlx::query("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS id FROM runs")
            .fetch_one(&mut *tx)
            .await?;
        let id: i64 = row.try_get("id")?;
        sqlx::query(
            "INSERT INTO runs (id, started_at, status, sources) VALUES ($1, $2, 'running', $3)",
        )
        .bind(id)
        .bind(now())
        .bind(serde_json::to_string(sources).expect("strings serialize"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
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
    ) -> Result<i64, LedgerError> {
        // One statement, so it never has to upgrade a read transaction to a write one
        // while the pipeline commits (SQLite answers that with "database is locked").
        let row = sqlx::query(
            "INSERT INTO runs (id, started_at, finished_at, status, sources, stats, error)
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6 FROM runs
             RETURNING id",
        )
        .bind(started_at)
        .bind(now())
        .bind(status)
        .bind(serde_json::to_string(sources).expect("strings serialize"))
        .bind(stats.to_string())
        .bind(error)
        .fetch_one(&self.pool)
        .await?;
        let id: i64 = row.try_get("id")?;
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
    /// sync (the collection was found empty: recreated on a new server, or dropped).
    /// Returns how many documents that affects.
    pub async fn invalidate_collection(&self, name: &str) -> Result<u64, LedgerError> {
        let done = sqlx::query(
            "UPDATE documents SET version_hint = '', content_hash = NULL
             WHERE collection = $1 AND point_ids <> '[]'",
        )
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

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<DocRecord, LedgerError> {
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
    })
}
