//! The SQL source: a table or a SELECT over PostgreSQL, MySQL/MariaDB or SQLite becomes
//! one document per row, its text rendered from a template over the row's columns and its
//! key made of the key columns. Rows are checked (schema, nulls, uniqueness, allowed
//! values, ranges, empty texts) before anything of a scan is sent.
//!
//! Invariant: a scan reports every live row exactly once (as changed, unchanged since the
//! cursor, or quarantined) and ends in `ScanComplete` only after the last one; a
//! connection or query failure, schema drift or a failed check in `fail` mode ends it
//! before that, so nothing is concluded about deletions. In `fail` mode no row of a scan
//! that violates a check is sent at all. Values are read as the database itself renders
//! them as text. The connection URL (a secret) is never logged or reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, Row};
use tracing::{debug, warn};

use crate::{
    content_hash, Change, CheckReport, DocContent, Partition, RawDoc, Source, SourceContext,
    SourceError,
};

/// Violations a check report lists one by one (all are counted).
const MAX_EXAMPLES: usize = 20;

/// Which SQL dialect a URL speaks (identifier quoting, casts and date arithmetic differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::MySql),
            "sqlite" => Some(Self::Sqlite),
            _ => None,
        }
    }

    fn quote(self, identifier: &str) -> String {
        match self {
            Self::MySql => format!("`{}`", identifier.replace('`', "``")),
            Self::Postgres | Self::Sqlite => format!("\"{}\"", identifier.replace('"', "\"\"")),
        }
    }

    /// A possibly schema-qualified table name (`schema.table`), each part quoted.
    fn quote_table(self, table: &str) -> String {
        table
            .split('.')
            .map(|part| self.quote(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn as_text(self, expression: &str) -> String {
        match self {
            Self::MySql => format!("CAST({expression} AS CHAR)"),
            Self::Postgres | Self::Sqlite => format!("CAST({expression} AS TEXT)"),
        }
    }

    /// A row's document key in SQL: what [`doc_key`] makes of the key columns as
    /// [`Self::as_text`] renders them (`%` -> `%25`, then `/` -> `%2F`, joined by `/`).
    fn key_expr(self, key: &[String]) -> String {
        let parts: Vec<String> = key
            .iter()
            .map(|column| {
                format!(
                    "REPLACE(REPLACE({}, '%', '%25'), '/', '%2F')",
                    self.as_text(&format!("q.{}", self.quote(column)))
                )
            })
            .collect();
        match self {
            Self::MySql => format!("CONCAT({})", parts.join(", '/', ")),
            Self::Postgres | Self::Sqlite => parts.join(" || '/' || "),
        }
    }

    /// [`Partition::key_hash`] of a key expression in SQL (the first 60 bits of the MD5
    /// of its UTF-8 bytes, whatever the database's or the connection's encoding); `None`
    /// where the database has no MD5 (SQLite).
    fn key_hash(self, key: &str) -> Option<String> {
        match self {
            Self::Postgres => Some(format!(
                "('x' || substr(md5(convert_to({key}, 'UTF8')), 1, 15))::bit(60)::bigint"
            )),
            Self::MySql => Some(format!(
                "CAST(CONV(SUBSTRING(MD5(CONVERT({key} USING utf8mb4)), 1, 15), 16, 10) AS UNSIGNED)"
            )),
            Self::Sqlite => None,
        }
    }

    /// `column >= cursor - overlap`, for a timestamp column and a cursor the database
    /// rendered as text itself.
    fn since(self, column: &str, cursor: &str, overlap: Duration) -> String {
        let literal = format!("'{}'", cursor.replace('\'', "''"));
        let seconds = overlap.as_secs();
        match self {
            Self::Postgres => {
                format!("{column} >= CAST({literal} AS timestamptz) - INTERVAL '{seconds} seconds'")
            }
            Self::MySql => {
                format!("{column} >= DATE_SUB(CAST({literal} AS DATETIME(6)), INTERVAL {seconds} SECOND)")
            }
            Self::Sqlite => format!("{column} >= datetime({literal}, '-{seconds} seconds')"),
        }
    }
}

/// What a failed check does to the scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnViolation {
    /// Nothing from the scan is written; the run reports the violations.
    #[default]
    Fail,
    /// Bad rows are recorded with their reasons and not indexed; the rest is.
    Quarantine,
}

/// Data-quality checks, run on every scan before anything is sent.
#[derive(Debug, Clone)]
pub struct Checks {
    pub on_violation: OnViolation,
    /// Columns that must exist, with the kind of type each must have: `integer`,
    /// `number`, `text`, `timestamp`, `boolean` or `any`. A mismatch is schema drift and
    /// always fails the scan.
    pub columns: BTreeMap<String, String>,
    /// Columns that must not be NULL (key columns never may).
    pub not_null: Vec<String>,
    /// Key values must be unique.
    pub unique_key: bool,
    /// Columns whose values must be one of these.
    pub allowed: BTreeMap<String, Vec<String>>,
    /// Columns whose numeric values must lie in `[min, max]`.
    pub ranges: BTreeMap<String, (f64, f64)>,
    /// Largest share of rows whose rendered text is empty.
    pub max_empty_text_share: Option<f64>,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            on_violation: OnViolation::Fail,
            columns: BTreeMap::new(),
            not_null: Vec::new(),
            unique_key: true,
            allowed: BTreeMap::new(),
            ranges: BTreeMap::new(),
            max_empty_text_share: None,
        }
    }
}

/// What rows to read and how a row becomes a document.
#[derive(Debug, Clone)]
pub struct SqlSourceOptions {
    /// Connection URL (`postgres://`, `mysql://`, `sqlite://`); a secret, never logged.
    pub url: String,
    /// Where the URL came from, for messages (e.g. the environment variable's name).
    pub url_origin: String,
    /// A table (optionally `schema.table`)...
    pub table: Option<String>,
    /// ...or a SELECT (joins welcome); exactly one of the two.
    pub query: Option<String>,
    /// Columns whose values identify a row; the document key.
    pub key: Vec<String>,
    /// What gets embedded: `{column}` placeholders over the row (`{{` for a brace).
    pub text: String,
    /// Columns copied into every point's payload, for filtering (tenant, group, status).
    pub metadata: Vec<String>,
    /// A timestamp column bumped on every change (`updated_at`): only rows changed since
    /// the committed cursor, minus `cursor_overlap`, are read in full. `None`: every scan
    /// reads every row and compares content hashes.
    pub cursor_column: Option<String>,
    /// How far before the cursor each scan starts again, so rows committed out of order
    /// (an older timestamp committed after the cursor moved on) are not missed.
    pub cursor_overlap: Duration,
    /// A column marking deleted rows: a row is live when it is NULL, empty, 0 or false.
    pub soft_delete_column: Option<String>,
    pub checks: Checks,
    /// How often a following source scans again.
    pub poll_interval: Duration,
    /// PostgreSQL only: a LISTEN/NOTIFY channel whose notifications wake a following
    /// source before its next poll (a trigger sends them; see the README). Only a
    /// wake-up: the scan still goes by the cursor, so a lost notification loses nothing.
    pub notify_channel: Option<String>,
}

pub struct SqlSource {
    id: String,
    options: SqlSourceOptions,
    dialect: Dialect,
    template: Template,
    /// Every column a scan reads, each once; a row's values come in this order.
    columns: Vec<String>,
}

impl std::fmt::Debug for SqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the options: they hold the URL.
        f.debug_struct("SqlSource")
            .field("id", &self.id)
            .field("dialect", &self.dialect)
            .field("table", &self.options.table)
            .finish_non_exhaustive()
    }
}

/// One row as text, by column position in [`SqlSource::columns`].
type Values = Vec<Option<String>>;

impl SqlSource {
    pub fn new(id: impl Into<String>, options: SqlSourceOptions) -> Result<Self, SourceError> {
        let id = id.into();
        let config = |reason: String| SourceError::Config {
            source_id: id.clone(),
            reason,
        };
        let dialect = Dialect::from_url(&options.url).ok_or_else(|| {
            config(format!(
                "the connection URL in {} is not a postgres://, mysql:// or sqlite:// URL",
                options.url_origin
            ))
        })?;
        match (&options.table, &options.query) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err(config("give exactly one of `table` and `query`".into())),
        }
        if options.key.is_empty() {
            return Err(config("`key` names no column".into()));
        }
        for (column, kind) in &options.checks.columns {
            if TypeKind::parse(kind).is_none() {
                return Err(config(format!(
                    "checks.columns.{column} = {kind:?}: use integer, number, text, timestamp, boolean or any"
                )));
            }
        }
        if options.notify_channel.is_some() && dialect != Dialect::Postgres {
            return Err(config(
                "`notify_channel` needs PostgreSQL (LISTEN/NOTIFY); other databases are polled"
                    .into(),
            ));
        }
        let template = Template::parse(&options.text).map_err(config)?;
        let columns = scan_columns(&options, &template);
        Ok(Self {
            id,
            options,
            dialect,
            template,
            columns,
        })
    }

    fn columns(&self) -> &[String] {
        &self.columns
    }

    fn from(&self) -> String {
        match (&self.options.table, &self.options.query) {
            (Some(table), _) => self.dialect.quote_table(table),
            (None, Some(query)) => format!("({})", query.trim().trim_end_matches(';')),
            (None, None) => unreachable!("checked in new()"),
        }
    }

    /// `WHERE` conditions: live rows only, (with a cursor) rows changed since it, and
    /// (with a partition) the partition's rows, where the database can hash keys.
    fn conditions(&self, cursor: Option<&str>, partition: Option<Partition>) -> String {
        let d = self.dialect;
        let mut conditions = Vec::new();
        if let Some(partition) = partition.filter(|p| p.count > 1) {
            conditions.extend(self.partition_condition(partition));
        }
        if let Some(column) = &self.options.soft_delete_column {
            conditions.push(format!(
                "COALESCE(LOWER({}), '') IN ('', '0', 'f', 'false')",
                d.as_text(&format!("q.{}", d.quote(column)))
            ));
        }
        if let (Some(column), Some(cursor)) = (&self.options.cursor_column, cursor) {
            conditions.push(d.since(
                &format!("q.{}", d.quote(column)),
                cursor,
                self.options.cursor_overlap,
            ));
        }
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }

    /// The partition's rows, by the hash of their document key: `hash >= lo AND hash <
    /// hi`. A row with a NULL key column has no key: it counts as hash 0 (partition 0), so
    /// the `not_null` check still sees it in exactly one partition. `None` for SQLite,
    /// which has no MD5: see [`SqlSource::filtered_here`].
    fn partition_condition(&self, partition: Partition) -> Option<String> {
        let d = self.dialect;
        let hash = d.key_hash(&d.key_expr(&self.options.key))?;
        let (lo, hi) = partition.hash_range();
        let hash = if lo == 0 {
            format!("COALESCE({hash}, 0)")
        } else {
            hash
        };
        Some(format!("{hash} >= {lo} AND {hash} < {hi}"))
    }

    /// The partition this source must pick its rows from itself, after reading them:
    /// SQLite has no MD5 function (and a reader cannot count on loadable extensions), so
    /// a partitioned SQLite scan reads every row and drops other partitions' rows before
    /// the checks count them; its cursor maximum stays the whole table's (a later
    /// position than the partition's own, still correct). PostgreSQL and MySQL filter in
    /// SQL (`None` here).
    fn filtered_here(&self, partition: Option<Partition>) -> Option<Partition> {
        partition.filter(|p| p.count > 1 && self.dialect == Dialect::Sqlite)
    }

    /// The scan's SELECT: every needed column as text.
    fn select(&self, cursor: Option<&str>, partition: Option<Partition>) -> String {
        let d = self.dialect;
        let columns: Vec<String> = self
            .columns()
            .iter()
            .map(|c| {
                format!(
                    "{} AS {}",
                    d.as_text(&format!("q.{}", d.quote(c))),
                    d.quote(c)
                )
            })
            .collect();
        format!(
            "SELECT {} FROM {} AS q{}",
            columns.join(", "),
            self.from(),
            self.conditions(cursor, partition)
        )
    }

    /// Every live key (cursor mode: to tell unchanged rows from deleted ones).
    fn select_keys(&self, partition: Option<Partition>) -> String {
        let d = self.dialect;
        let columns: Vec<String> = self
            .options
            .key
            .iter()
            .map(|c| d.as_text(&format!("q.{}", d.quote(c))))
            .collect();
        format!(
            "SELECT {} FROM {} AS q{}",
            columns.join(", "),
            self.from(),
            self.conditions(None, partition)
        )
    }

    /// Ties a stored cursor to what it was computed over: another query or cursor column
    /// makes it meaningless, and so does another partition (its maximum was taken over
    /// other rows). An unpartitioned scan's scope is what it always was.
    fn cursor_scope(&self, partition: Option<Partition>) -> String {
        let mut scope = format!(
            "{}\u{1f}{:?}\u{1f}{:?}",
            self.from(),
            self.options.cursor_column,
            self.options.soft_delete_column
        );
        if let Some(partition) = partition.filter(|p| p.count > 1) {
            scope.push_str(&format!("\u{1f}partition {partition}"));
        }
        content_hash(scope.as_bytes())[..16].to_string()
    }

    fn scan_failed(&self, what: &str, err: impl std::fmt::Display) -> SourceError {
        SourceError::ScanFailed {
            source_id: self.id.clone(),
            reason: format!("{what}: {}", redact(&err.to_string(), &self.options.url)),
        }
    }

    async fn connect(&self) -> Result<AnyPool, SourceError> {
        sqlx::any::install_default_drivers();
        let cannot = |err: sqlx::Error| {
            self.scan_failed(
                &format!(
                    "cannot connect to the database (URL from {})",
                    self.options.url_origin
                ),
                err,
            )
        };
        let options = self
            .options
            .url
            .parse::<sqlx::any::AnyConnectOptions>()
            .map_err(cannot)?
            // A scan streams rows as fast as the embedder takes them: "slow" by design.
            .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
        AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|err| {
                self.scan_failed(
                    &format!(
                        "cannot connect to the database (URL from {})",
                        self.options.url_origin
                    ),
                    err,
                )
            })
    }

    /// Schema drift: every column the checks name exists with the expected kind of type.
    async fn check_schema(&self) -> Result<(), SourceError> {
        if self.options.checks.columns.is_empty() {
            return Ok(());
        }
        let sql = format!("SELECT * FROM {} AS q", self.from());
        let url = &self.options.url;
        let found = match self.dialect {
            Dialect::Postgres => describe::<sqlx::Postgres>(url, &sql).await,
            Dialect::MySql => describe::<sqlx::MySql>(url, &sql).await,
            Dialect::Sqlite => describe::<sqlx::Sqlite>(url, &sql).await,
        }
        .map_err(|err| self.scan_failed("cannot read the columns", err))?;
        let mut problems = Vec::new();
        for (column, expected) in &self.options.checks.columns {
            let kind = TypeKind::parse(expected).expect("validated in new()");
            match found.get(&column.to_ascii_lowercase()) {
                None => problems.push(format!("column `{column}` is missing")),
                Some(actual) if !kind.admits(actual, self.dialect) => problems.push(format!(
                    "column `{column}` is {actual}, expected {expected}"
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SourceError::ScanFailed {
                source_id: self.id.clone(),
                reason: format!(
                    "schema drift: {}; fix the table or the config",
                    problems.join("; ")
                ),
            })
        }
    }

    /// One full scan. With a cursor, rows changed since it are read in full and every
    /// other live key is reported unchanged; without one, every row is read.
    /// With `cx.partition`, only the partition's rows are read (and checked).
    async fn scan(&self, pool: &AnyPool, cx: &SourceContext) -> Result<(), SourceError> {
        self.check_schema().await?;
        let partition = cx.partition;
        let here = self.filtered_here(partition);
        let scope = self.cursor_scope(partition);
        let cursor = match (&self.options.cursor_column, cx.committed_cursor()) {
            (Some(_), Some(stored)) => stored
                .split_once('|')
                .filter(|(s, _)| *s == scope)
                .map(|(_, value)| value.to_string()),
            _ => None,
        };
        // The new cursor is read before the rows: a row changed during the scan gets a
        // later timestamp and is read by the next scan.
        let next_cursor = match &self.options.cursor_column {
            Some(column) => {
                let d = self.dialect;
                let sql = format!(
                    "SELECT {} FROM {} AS q{}",
                    d.as_text(&format!("MAX(q.{})", d.quote(column))),
                    self.from(),
                    self.conditions(None, partition)
                );
                let row = sqlx::query(&sql)
                    .fetch_one(pool)
                    .await
                    .map_err(|e| self.scan_failed("the query failed", e))?;
                text_value(&row, 0)
            }
            None => None,
        };

        let mut checker = Checker::new(self);
        let all_keys = if cursor.is_some() {
            Some(self.live_keys(pool, &mut checker, partition).await?)
        } else {
            None
        };
        let sql = self.select(cursor.as_deref(), partition);
        debug!(source = %self.id, sql = %sql, "scanning");
        if self.options.checks.on_violation == OnViolation::Fail && checker.has_row_rules() {
            // A dry pass first: in `fail` mode not one row of a bad scan is sent.
            let mut rows = sqlx::query(&sql).fetch(pool);
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| self.scan_failed("the query failed", e))?
            {
                let values = self.values(&row);
                if here.is_some_and(|p| !in_partition(p, self.key_of(&values).as_deref())) {
                    continue;
                }
                let empty = self.template.render(&|c| self.value(&values, c)).is_empty();
                checker.check_row(self, &values, empty, all_keys.is_none());
            }
            checker.finish_share();
            if checker.violations > 0 {
                let report = checker.report("failed");
                let first = report.examples.first().cloned().unwrap_or_default();
                cx.send(Change::Checked(report.clone())).await?;
                return Err(SourceError::ScanFailed {
                    source_id: self.id.clone(),
                    reason: format!(
                        "data-quality checks failed: {} violation(s) in {} rows (first: {first}); nothing from this scan was written or deleted (see `freshet status`)",
                        report.violations, report.rows
                    ),
                });
            }
            checker = Checker::new(self);
            if let Some(keys) = &all_keys {
                checker.rows = keys.len() as u64;
            }
        }

        let mut sent = HashSet::new();
        let mut held_empty = Vec::new();
        let mut rows = sqlx::query(&sql).fetch(pool);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| self.scan_failed("the query failed", e))?
        {
            let values = self.values(&row);
            if here.is_some_and(|p| !in_partition(p, self.key_of(&values).as_deref())) {
                continue;
            }
            let text = self.template.render(&|c| self.value(&values, c));
            let problems = checker.check_row(self, &values, text.is_empty(), all_keys.is_none());
            let Some(key) = self.key_of(&values) else {
                continue;
            };
            if !sent.insert(key.clone()) {
                continue;
            }
            let doc = self.document(key, text, &values);
            if !problems.is_empty() {
                if self.options.checks.on_violation == OnViolation::Fail {
                    // Changed since the dry pass: stop before anything is concluded.
                    return Err(SourceError::ScanFailed {
                        source_id: self.id.clone(),
                        reason: format!(
                            "data-quality checks failed while reading: {}",
                            problems.join("; ")
                        ),
                    });
                }
                cx.send(Change::Quarantine {
                    key: doc.key,
                    version: doc.version,
                    reason: problems.join("; "),
                })
                .await?;
            } else if checker.limits_empty_share() && doc.size == Some(0) {
                // Whether empty texts are too many is known only at the end.
                held_empty.push(doc);
            } else {
                cx.send(Change::Upsert(doc)).await?;
            }
        }
        drop(rows);
        let too_many_empty = checker.finish_share();
        for doc in held_empty {
            if too_many_empty {
                cx.send(Change::Quarantine {
                    key: doc.key,
                    version: doc.version,
                    reason: "empty text (the share of empty texts is over max_empty_text_share)"
                        .into(),
                })
                .await?;
            } else {
                cx.send(Change::Upsert(doc)).await?;
            }
        }
        if let Some(keys) = all_keys {
            for key in keys {
                if !sent.contains(&key) {
                    cx.send(Change::Unchanged(key)).await?;
                }
            }
        }
        let outcome = if checker.violations > 0 {
            "quarantined"
        } else {
            "passed"
        };
        cx.send(Change::Checked(checker.report(outcome))).await?;
        if let Some(next) = next_cursor {
            cx.send(Change::Cursor(format!("{scope}|{next}"))).await?;
        }
        Ok(())
    }

    /// Every live key (of the partition), checking uniqueness and non-null keys over the
    /// whole table (partition).
    async fn live_keys(
        &self,
        pool: &AnyPool,
        checker: &mut Checker,
        partition: Option<Partition>,
    ) -> Result<BTreeSet<String>, SourceError> {
        let here = self.filtered_here(partition);
        let mut keys = BTreeSet::new();
        let sql = self.select_keys(partition);
        let mut rows = sqlx::query(&sql).fetch(pool);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| self.scan_failed("the query failed", e))?
        {
            let values: Vec<Option<String>> = (0..self.options.key.len())
                .map(|i| text_value(&row, i))
                .collect();
            let key = values
                .iter()
                .map(|v| v.as_deref())
                .collect::<Option<Vec<&str>>>()
                .map(|parts| doc_key(parts.into_iter()));
            if here.is_some_and(|p| !in_partition(p, key.as_deref())) {
                continue;
            }
            checker.rows += 1;
            let Some(key) = key else {
                checker.violation(format!(
                    "not_null: a key column ({}) is NULL",
                    self.options.key.join(", ")
                ));
                continue;
            };
            if !keys.insert(key.clone()) && self.options.checks.unique_key {
                checker.violation(format!("unique_key: key {key} appears more than once"));
            }
        }
        Ok(keys)
    }

    fn values(&self, row: &sqlx::any::AnyRow) -> Values {
        (0..self.columns().len())
            .map(|i| text_value(row, i))
            .collect()
    }

    fn value<'v>(&self, values: &'v Values, column: &str) -> Option<&'v str> {
        self.columns()
            .iter()
            .position(|c| c == column)
            .and_then(|i| values[i].as_deref())
    }

    fn key_of(&self, values: &Values) -> Option<String> {
        let parts: Option<Vec<&str>> = self
            .options
            .key
            .iter()
            .map(|k| self.value(values, k))
            .collect();
        parts.map(|parts| doc_key(parts.into_iter()))
    }

    fn document(&self, key: String, text: String, values: &Values) -> RawDoc {
        let mut metadata = serde_json::Map::new();
        if let Some(table) = &self.options.table {
            metadata.insert("table".into(), table.clone().into());
        }
        let row_key: serde_json::Map<String, serde_json::Value> = self
            .options
            .key
            .iter()
            .map(|k| (k.clone(), self.value(values, k).unwrap_or_default().into()))
            .collect();
        metadata.insert("row_key".into(), row_key.into());
        for column in &self.options.metadata {
            metadata.insert(
                column.clone(),
                self.value(values, column)
                    .map_or(serde_json::Value::Null, Into::into),
            );
        }
        // The version covers every value read, checked columns included: a change to any
        // of them may change the document or the outcome of its checks.
        let mut all = text.clone();
        for value in values {
            all.push('\u{1f}');
            all.push_str(value.as_deref().unwrap_or("\u{0}"));
        }
        let version = content_hash(all.as_bytes());
        RawDoc {
            key,
            version,
            size: Some(text.len() as u64),
            content: DocContent::Inline(text.into_bytes()),
            media: Some("text".into()),
            metadata,
        }
    }
}

/// Every column a scan reads, each once: key, template, metadata, checked, cursor.
fn scan_columns(o: &SqlSourceOptions, template: &Template) -> Vec<String> {
    let mut seen = BTreeSet::new();
    o.key
        .iter()
        .chain(template.columns())
        .chain(&o.metadata)
        .chain(&o.checks.not_null)
        .chain(o.checks.allowed.keys())
        .chain(o.checks.ranges.keys())
        .chain(&o.cursor_column)
        .filter(|c| seen.insert(c.as_str()))
        .cloned()
        .collect()
}

/// Row rules applied during a scan, and what they found.
struct Checker {
    rows: u64,
    empty: u64,
    violations: u64,
    examples: Vec<String>,
    keys: HashSet<String>,
    max_empty_share: Option<f64>,
    rules: bool,
}

impl Checker {
    fn new(source: &SqlSource) -> Self {
        let c = &source.options.checks;
        Self {
            rows: 0,
            empty: 0,
            violations: 0,
            examples: Vec::new(),
            keys: HashSet::new(),
            max_empty_share: c.max_empty_text_share,
            rules: !c.not_null.is_empty()
                || !c.allowed.is_empty()
                || !c.ranges.is_empty()
                || c.max_empty_text_share.is_some()
                || c.unique_key,
        }
    }

    fn has_row_rules(&self) -> bool {
        self.rules
    }

    fn limits_empty_share(&self) -> bool {
        self.max_empty_share.is_some()
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(what);
        }
    }

    /// Checks one row; returns its problems (each also counted). `count_row` is false
    /// when the key pass already counted the rows and checked key uniqueness.
    fn check_row(
        &mut self,
        source: &SqlSource,
        values: &Values,
        empty_text: bool,
        whole_table: bool,
    ) -> Vec<String> {
        let c = &source.options.checks;
        let key = source
            .key_of(values)
            .unwrap_or_else(|| "<NULL key>".to_string());
        let mut problems = Vec::new();
        if whole_table {
            self.rows += 1;
        }
        if empty_text {
            self.empty += 1;
        }
        for column in source.options.key.iter().chain(&c.not_null) {
            if source.value(values, column).is_none() {
                problems.push(format!("not_null: column `{column}` is NULL in row {key}"));
            }
        }
        if whole_table && c.unique_key && !self.keys.insert(key.clone()) {
            problems.push(format!("unique_key: key {key} appears more than once"));
        }
        for (column, allowed) in &c.allowed {
            if let Some(value) = source.value(values, column) {
                if !allowed.iter().any(|a| a == value) {
                    problems.push(format!(
                        "allowed: column `{column}` is {value:?} in row {key}, not one of {allowed:?}"
                    ));
                }
            }
        }
        for (column, (min, max)) in &c.ranges {
            if let Some(value) = source.value(values, column) {
                match value.trim().parse::<f64>() {
                    Ok(n) if n >= *min && n <= *max => {}
                    Ok(n) => problems.push(format!(
                        "range: column `{column}` is {n} in row {key}, outside [{min}, {max}]"
                    )),
                    Err(_) => problems.push(format!(
                        "range: column `{column}` is {value:?} in row {key}, not a number"
                    )),
                }
            }
        }
        for problem in &problems {
            self.violation(problem.clone());
        }
        problems
    }

    /// Applies the empty-text share rule once every row was seen; true when exceeded.
    fn finish_share(&mut self) -> bool {
        let Some(max) = self.max_empty_share else {
            return false;
        };
        let share = self.empty as f64 / self.rows.max(1) as f64;
        if self.empty > 0 && share > max {
            self.violation(format!(
                "max_empty_text_share: {} of {} rows ({:.0}%) render an empty text, over {:.0}%",
                self.empty,
                self.rows,
                share * 100.0,
                max * 100.0
            ));
            true
        } else {
            false
        }
    }

    fn report(&self, outcome: &str) -> CheckReport {
        CheckReport {
            outcome: outcome.to_string(),
            rows: self.rows,
            violations: self.violations,
            examples: self.examples.clone(),
        }
    }
}

/// A kind of column type a check can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeKind {
    Integer,
    Number,
    Text,
    Timestamp,
    Boolean,
    Any,
}

impl TypeKind {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "integer" => Self::Integer,
            "number" => Self::Number,
            "text" => Self::Text,
            "timestamp" => Self::Timestamp,
            "boolean" => Self::Boolean,
            "any" => Self::Any,
            _ => return None,
        })
    }

    /// Whether a database's type name is of this kind.
    fn admits(self, type_name: &str, dialect: Dialect) -> bool {
        let t = type_name.to_ascii_uppercase();
        let integer = t.contains("INT") && !t.contains("INTERVAL") && !t.contains("POINT");
        let number = integer
            || ["NUMERIC", "DECIMAL", "REAL", "FLOAT", "DOUBLE", "MONEY"]
                .iter()
                .any(|n| t.contains(n));
        match self {
            Self::Integer => integer,
            Self::Number => number,
            Self::Text => ["CHAR", "TEXT", "NAME", "CLOB", "STRING", "CITEXT"]
                .iter()
                .any(|n| t.contains(n)),
            // SQLite has no date type: dates are stored as text or numbers.
            Self::Timestamp if dialect == Dialect::Sqlite => {
                t.contains("TIME") || t.contains("DATE") || t.contains("TEXT") || number
            }
            Self::Timestamp => t.contains("TIME") || t.contains("DATE"),
            Self::Boolean => t.contains("BOOL") || t == "TINYINT(1)",
            Self::Any => true,
        }
    }
}

/// The columns a query returns, lower-cased, with the database's name of their type. The
/// `Any` driver cannot name types such as timestamps, so this asks the native one.
async fn describe<DB: sqlx::Database>(
    url: &str,
    sql: &str,
) -> Result<HashMap<String, String>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    use sqlx::{Column, TypeInfo};
    let mut connection = DB::Connection::connect(url).await?;
    let described = (&mut connection).describe(sql).await?;
    Ok(described
        .columns()
        .iter()
        .map(|c| {
            (
                c.name().to_ascii_lowercase(),
                c.type_info().name().to_string(),
            )
        })
        .collect())
}

#[async_trait]
impl Source for SqlSource {
    fn id(&self) -> &str {
        &self.id
    }

    fn uses_cursor(&self) -> bool {
        self.options.cursor_column.is_some()
    }

    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError> {
        let mut listener = match (&self.options.notify_channel, cx.follow) {
            (Some(channel), true) => self.listen(channel).await,
            _ => None,
        };
        loop {
            let outcome = match self.connect().await {
                Ok(pool) => {
                    let scanned = self.scan(&pool, &cx).await;
                    pool.close().await;
                    scanned
                }
                Err(err) => Err(err),
            };
            if !cx.follow {
                outcome?;
                return cx.send(Change::ScanComplete).await;
            }
            // Following: scan on an interval. Each scan is complete, so rows deleted in
            // between are found by the sweep, and a failed scan deletes nothing.
            match outcome {
                Ok(()) => cx.send(Change::ScanComplete).await?,
                Err(SourceError::Cancelled) => return Ok(()),
                Err(err) => {
                    warn!(source = %self.id, error = %err, "scan failed; retrying at the next poll");
                    cx.send(Change::ScanAborted {
                        reason: err.to_string(),
                    })
                    .await?;
                }
            }
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cx.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.options.poll_interval) => {}
                woke = notified => match woke {
                    Ok(()) => {
                        // A burst of writes sends a burst of notifications: one scan.
                        tokio::time::sleep(NOTIFY_SETTLE).await;
                        if let Some(listener) = listener.as_mut() {
                            // (`try_recv` would wait for the next one.)
                            while listener.next_buffered().is_some() {}
                        }
                        debug!(source = %self.id, "woken by a notification");
                    }
                    Err(err) => {
                        warn!(source = %self.id, error = %redact(&err.to_string(), &self.options.url), "lost the notification channel; polling only until it is back");
                        listener = None;
                    }
                },
            }
            if listener.is_none() {
                if let Some(channel) = &self.options.notify_channel {
                    listener = self.listen(channel).await;
                }
            }
        }
    }
}

/// How long a notification's scan waits for the rest of its burst.
const NOTIFY_SETTLE: Duration = Duration::from_millis(200);

impl SqlSource {
    /// LISTENs on the channel; `None` (polling only, with a warning) when that fails.
    async fn listen(&self, channel: &str) -> Option<sqlx::postgres::PgListener> {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect(&self.options.url).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => {
                debug!(source = %self.id, channel, "listening for notifications");
                Some(listener)
            }
            Err(err) => {
                warn!(source = %self.id, channel, error = %redact(&err.to_string(), &self.options.url), "cannot LISTEN; polling only");
                None
            }
        }
    }
}

/// A column's value as the database rendered it as text (`None` for NULL).
fn text_value(row: &sqlx::any::AnyRow, index: usize) -> Option<String> {
    if let Ok(value) = row.try_get::<Option<String>, _>(index) {
        return value;
    }
    // MySQL reports a CAST of binary-collated data as bytes.
    row.try_get::<Option<Vec<u8>>, _>(index)
        .ok()
        .flatten()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether a row with this document key (`None`: a NULL key column) lies in the
/// partition; keyless rows go to partition 0, as in [`SqlSource::partition_condition`].
fn in_partition(partition: Partition, key: Option<&str>) -> bool {
    key.map_or(partition.index == 0, |key| partition.contains(key))
}

/// Key values joined by `/`, each with `%` and `/` escaped so keys never collide.
fn doc_key<'a>(values: impl Iterator<Item = &'a str>) -> String {
    values
        .map(|v| v.replace('%', "%25").replace('/', "%2F"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Removes the URL (and its password) from a driver message.
fn redact(message: &str, url: &str) -> String {
    let mut out = message.replace(url, "<url>");
    if let Some(password) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty())
    {
        out = out.replace(password, "<password>");
    }
    out
}

/// A text template: literal text and `{column}` placeholders.
#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Column(String),
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "text template {text:?}: `{{{name}` is not closed"
                                ))
                            }
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("text template {text:?} has an empty `{{}}`"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(name));
                }
                '}' => {
                    return Err(format!(
                        "text template {text:?}: a lone `}}` (write `}}}}` for a brace)"
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(format!("text template {text:?} names no column"));
        }
        Ok(Self { parts })
    }

    fn columns(&self) -> impl Iterator<Item = &String> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(name) => Some(name),
            Part::Literal(_) => None,
        })
    }

    /// NULL renders as nothing.
    fn render<'a>(&self, value: &dyn Fn(&str) -> Option<&'a str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Column(name) => out.push_str(value(name).unwrap_or_default()),
            }
        }
        out.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_columns_and_escaped_braces() {
        let template = Template::parse("{title}\n\n{{draft}} {body}").unwrap();
        assert_eq!(
            template.columns().cloned().collect::<Vec<_>>(),
            ["title", "body"]
        );
        let row = |c: &str| match c {
            "title" => Some("Hello"),
            _ => None,
        };
        assert_eq!(template.render(&row), "Hello\n\n{draft}");
        assert!(Template::parse("{title").is_err());
        assert!(Template::parse("no columns").is_err());
        assert!(Template::parse("a } b {x}").is_err());
    }

    #[test]
    fn keys_escape_their_separator() {
        assert_eq!(doc_key(["1", "7"].into_iter()), "1/7");
        assert_eq!(doc_key(["a/b", "c"].into_iter()), "a%2Fb/c");
        assert_ne!(
            doc_key(["a/b"].into_iter()),
            doc_key(["a", "b"].into_iter())
        );
    }

    #[test]
    fn the_select_reads_needed_columns_as_text_in_each_dialect() {
        let options = SqlSourceOptions {
            url: "mysql://root@localhost/test".into(),
            url_origin: "test".into(),
            table: Some("shop.product".into()),
            query: None,
            key: vec!["id".into()],
            text: "{name}: {description}".into(),
            metadata: vec!["tenant".into(), "name".into()],
            cursor_column: None,
            cursor_overlap: Duration::from_secs(60),
            soft_delete_column: None,
            checks: Checks::default(),
            poll_interval: Duration::from_secs(30),
            notify_channel: None,
        };
        let mysql = SqlSource::new("p", options.clone()).unwrap();
        assert_eq!(
            mysql.select(None, None),
            "SELECT CAST(q.`id` AS CHAR) AS `id`, CAST(q.`name` AS CHAR) AS `name`, CAST(q.`description` AS CHAR) AS `description`, CAST(q.`tenant` AS CHAR) AS `tenant` FROM `shop`.`product` AS q"
        );
        let pg = SqlSource::new(
            "p",
            SqlSourceOptions {
                url: "postgres://u:secret@h/db".into(),
                table: None,
                query: Some("SELECT * FROM a JOIN b USING (id);".into()),
                ..options
            },
        )
        .unwrap();
        assert!(pg
            .select(None, None)
            .ends_with("FROM (SELECT * FROM a JOIN b USING (id)) AS q"));
        assert_eq!(
            redact(
                "error at postgres://u:secret@h/db: secret",
                "postgres://u:secret@h/db"
            ),
            "error at <url>: <password>"
        );
    }

    // Against the machine's servers (as the workspace's tests/sql_sources.rs: `.ci/run`
    // starts them) and a SQLite file.
    const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    const MARIADB_URL: &str = "mysql://root@127.0.0.1:3306/test";

    fn unique(prefix: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("{prefix}_{}_{nanos}", std::process::id())
    }

    async fn connect(url: &str) -> AnyPool {
        sqlx::any::install_default_drivers();
        AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap_or_else(|err| {
                panic!("cannot reach {url} (run .ci/run, which starts it): {err}")
            })
    }

    async fn exec(pool: &AnyPool, sql: &str) {
        sqlx::query(sql)
            .execute(pool)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("partitions.db").display()
        )
    }

    /// Key values that need escaping or are not ASCII: `(name, n)`.
    const TRICKY: [(&str, i64); 9] = [
        ("plain", 1),
        ("a/b", 7),
        ("100%", 0),
        ("%2F", -3),
        ("é", 42),
        ("日本語/テキスト", 5),
        ("with space", 12345678901),
        ("50%/x y é", 9),
        ("", 2),
    ];

    /// The database computes each row's key and its hash; both match what the source and
    /// [`Partition::key_hash`] compute from the key columns' text.
    async fn sql_key_hash_matches_rust(url: &str) {
        let pool = connect(url).await;
        let source = source_for(url, "unused", None);
        let d = source.dialect;
        let table = unique("freshet_keyhash");
        exec(
            &pool,
            &format!("CREATE TABLE {table} (name VARCHAR(100), n BIGINT)"),
        )
        .await;
        let rows: Vec<String> = TRICKY
            .iter()
            .map(|(name, n)| format!("('{name}', {n})"))
            .collect();
        exec(
            &pool,
            &format!("INSERT INTO {table} (name, n) VALUES {}", rows.join(", ")),
        )
        .await;
        let key_sets: [&[&str]; 4] = [&["name", "n"], &["n", "name"], &["name"], &["n"]];
        let mut expected_keys = BTreeSet::new();
        for key in key_sets {
            let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
            let key_expr = d.key_expr(&key);
            let hash = d.key_hash(&key_expr).unwrap();
            let text: Vec<String> = key
                .iter()
                .map(|k| d.as_text(&format!("q.{}", d.quote(k))))
                .collect();
            let sql = format!(
                "SELECT {key_expr}, {}, {} FROM {table} AS q",
                d.as_text(&hash),
                text.join(", ")
            );
            let found = sqlx::query(&sql)
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|err| panic!("{sql}: {err}"));
            assert_eq!(found.len(), TRICKY.len());
            for row in found {
                let sql_key = text_value(&row, 0).unwrap();
                let sql_hash: i64 = text_value(&row, 1).unwrap().parse().unwrap();
                let values: Vec<String> = (0..key.len())
                    .map(|i| text_value(&row, 2 + i).unwrap())
                    .collect();
                let rust_key = doc_key(values.iter().map(String::as_str));
                assert_eq!(sql_key, rust_key, "{url}");
                assert_eq!(
                    sql_hash,
                    Partition::key_hash(&rust_key),
                    "{url}: {rust_key:?}"
                );
                expected_keys.insert(sql_key);
            }
        }
        for key in [
            "a%2Fb/7",
            "100%25/0",
            "%252F/-3",
            "日本語%2Fテキスト",
            "50%25%2Fx y é/9",
            "with space",
            "/2",
            "12345678901",
        ] {
            assert!(
                expected_keys.contains(key),
                "{url}: no key {key:?} in {expected_keys:?}"
            );
        }
        exec(&pool, &format!("DROP TABLE {table}")).await;
        pool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_key_hash_in_sql_equals_partition_key_hash() {
        sql_key_hash_matches_rust(POSTGRES_URL).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_key_hash_in_sql_equals_partition_key_hash() {
        sql_key_hash_matches_rust(MARIADB_URL).await;
    }

    #[test]
    fn the_partition_condition_is_in_every_query_of_a_scan() {
        let pg = source_for("postgres://h/db", "t", Some("updated_at"));
        let p = Partition::new(1, 4);
        let (lo, hi) = p.hash_range();
        let hash = "('x' || substr(md5(convert_to(REPLACE(REPLACE(CAST(q.\"id\" AS TEXT), '%', '%25'), '/', '%2F') || '/' || REPLACE(REPLACE(CAST(q.\"tag\" AS TEXT), '%', '%25'), '/', '%2F'), 'UTF8')), 1, 15))::bit(60)::bigint";
        let condition = format!("{hash} >= {lo} AND {hash} < {hi}");
        assert!(pg
            .select(None, Some(p))
            .ends_with(&format!(" WHERE {condition}")));
        assert!(pg.select(Some("2020-01-01"), Some(p)).contains(&condition));
        assert!(pg.select_keys(Some(p)).ends_with(&condition));
        assert!(pg.conditions(None, Some(p)).contains(&condition));
        // Partition 0 also holds rows with a NULL key column (so checks see them).
        assert!(pg
            .conditions(None, Some(Partition::new(0, 4)))
            .contains(&format!("COALESCE({hash}, 0) >= 0 AND")));
        // One partition of one: no hashing at all.
        assert_eq!(pg.conditions(None, Some(Partition::new(0, 1))), "");
        assert_eq!(
            pg.cursor_scope(Some(Partition::new(0, 1))),
            pg.cursor_scope(None)
        );
        assert_ne!(pg.cursor_scope(Some(p)), pg.cursor_scope(None));
        let mysql = source_for("mysql://h/db", "t", None);
        assert!(mysql.select(None, Some(p)).contains(&format!(
            "CAST(CONV(SUBSTRING(MD5(CONVERT(CONCAT(REPLACE(REPLACE(CAST(q.`id` AS CHAR), '%', '%25'), '/', '%2F'), '/', REPLACE(REPLACE(CAST(q.`tag` AS CHAR), '%', '%25'), '/', '%2F')) USING utf8mb4)), 1, 15), 16, 10) AS UNSIGNED) < {hi}"
        )));
        // SQLite cannot hash: it filters rows itself.
        let sqlite = source_for("sqlite://x.db", "t", None);
        assert_eq!(sqlite.select(None, Some(p)), sqlite.select(None, None));
        assert_eq!(sqlite.filtered_here(Some(p)), Some(p));
        assert_eq!(pg.filtered_here(Some(p)), None);
    }

    fn options_for(url: &str, table: &str, cursor_column: Option<&str>) -> SqlSourceOptions {
        SqlSourceOptions {
            url: url.into(),
            url_origin: "test".into(),
            table: Some(table.into()),
            query: None,
            key: vec!["id".into(), "tag".into()],
            text: "{body}".into(),
            metadata: vec![],
            cursor_column: cursor_column.map(str::to_string),
            cursor_overlap: Duration::ZERO,
            soft_delete_column: None,
            checks: Checks::default(),
            poll_interval: Duration::from_secs(30),
            notify_channel: None,
        }
    }

    fn source_for(url: &str, table: &str, cursor_column: Option<&str>) -> SqlSource {
        SqlSource::new("rows", options_for(url, table, cursor_column)).unwrap()
    }

    /// Tags that need escaping or are not ASCII, so SQL and Rust keys must agree.
    const TAGS: [&str; 6] = ["plain", "a/b", "50%", "é", "日本", "x y"];

    /// A table of 200 rows keyed by `(id, tag)`, each changed at its own time.
    async fn partition_table(url: &str, timestamp: &str) -> String {
        let pool = connect(url).await;
        let table = unique("freshet_part");
        exec(
            &pool,
            &format!("CREATE TABLE {table} (id INTEGER NOT NULL, tag VARCHAR(20) NOT NULL, body VARCHAR(200), updated_at {timestamp}, PRIMARY KEY (id, tag))"),
        )
        .await;
        let rows: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "({i}, '{}', 'row {i}', '2020-01-01 {:02}:{:02}:00')",
                    TAGS[i % TAGS.len()],
                    i / 60,
                    i % 60
                )
            })
            .collect();
        exec(
            &pool,
            &format!(
                "INSERT INTO {table} (id, tag, body, updated_at) VALUES {}",
                rows.join(", ")
            ),
        )
        .await;
        pool.close().await;
        table
    }

    /// What one scan of a partition reported, with a committed cursor.
    #[derive(Debug, Default)]
    struct Scanned {
        read: BTreeSet<String>,
        unchanged: BTreeSet<String>,
        cursor: Option<String>,
    }

    async fn scan_with_cursor(
        source: SqlSource,
        partition: Partition,
        cursor: Option<String>,
    ) -> Scanned {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let cx = SourceContext {
            changes: tx,
            cancel: Default::default(),
            follow: false,
            cursor: std::sync::Arc::new(std::sync::Mutex::new(cursor)),
            partition: Some(partition),
        };
        let run = tokio::spawn(Box::new(source).run(cx));
        let mut scanned = Scanned::default();
        let mut complete = false;
        while let Some(change) = rx.recv().await {
            assert!(!complete, "{change:?} after ScanComplete");
            match change {
                Change::Upsert(doc) => assert!(scanned.read.insert(doc.key)),
                Change::Unchanged(key) => assert!(scanned.unchanged.insert(key)),
                Change::Cursor(cursor) => scanned.cursor = Some(cursor),
                Change::Checked(report) => assert_eq!(report.outcome, "passed", "{report:?}"),
                Change::ScanComplete => complete = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        run.await.unwrap().unwrap();
        assert!(complete);
        assert!(scanned.read.is_disjoint(&scanned.unchanged));
        scanned
    }

    /// Partitions 0..n of n read disjoint key sets whose union is the whole table, each
    /// key in its partition; with a cursor too (the rows changed since it are read, the
    /// rest of the partition's keys reported unchanged).
    async fn partitions_split_the_table(url: &str, timestamp: &str) {
        let in_sql = Dialect::from_url(url) != Some(Dialect::Sqlite);
        let table = partition_table(url, timestamp).await;
        let all = crate::testing::scan(Box::new(source_for(url, &table, None)))
            .await
            .unwrap();
        assert_eq!(all.len(), 200, "{url}");
        assert!(
            all.contains_key("1/a%2Fb") && all.contains_key("2/50%25"),
            "{url}"
        );
        for count in [4, 3] {
            let mut union = BTreeMap::new();
            for index in 0..count {
                let partition = Partition::new(index, count);
                let source = Box::new(source_for(url, &table, None));
                // (`scan_partition` also checks every key lies in the partition.)
                let part = crate::testing::scan_partition(source, partition)
                    .await
                    .unwrap();
                assert!(
                    !part.is_empty() && part.len() < 100,
                    "{url} {partition}: {}",
                    part.len()
                );
                for (key, version) in part {
                    assert!(partition.contains(&key), "{url}: {key} not in {partition}");
                    assert!(
                        union.insert(key.clone(), version).is_none(),
                        "{url}: {key} twice"
                    );
                }
            }
            assert_eq!(union, all, "{url}: partitions of {count}");
        }

        // Cursor mode: the live keys and MAX(cursor) are the partition's too.
        let mut union = BTreeSet::new();
        for index in 0..3 {
            let partition = Partition::new(index, 3);
            let make = || source_for(url, &table, Some("updated_at"));
            let first = scan_with_cursor(make(), partition, None).await;
            assert!(first.unchanged.is_empty());
            let cursor = first.cursor.clone().expect("a cursor");
            let second = scan_with_cursor(make(), partition, Some(cursor.clone())).await;
            let keys: BTreeSet<String> = second.read.union(&second.unchanged).cloned().collect();
            assert_eq!(keys, first.read, "{url} {partition}");
            assert_eq!(second.cursor, Some(cursor), "{url}");
            if in_sql {
                // The partition's own maximum: only its newest row is read again.
                let newest = keys
                    .iter()
                    .map(|k| k.split('/').next().unwrap().parse::<u32>().unwrap())
                    .max()
                    .unwrap();
                assert_eq!(second.read.len(), 1, "{url} {partition}: {second:?}");
                assert!(
                    second
                        .read
                        .iter()
                        .all(|k| k.starts_with(&format!("{newest}/"))),
                    "{url} {partition}: {second:?}"
                );
            } else {
                // SQLite's maximum is the table's (its rows are filtered after reading):
                // at most the table's newest row is read again.
                assert!(second.read.len() <= 1, "{url} {partition}: {second:?}");
                assert!(
                    second.read.iter().all(|k| k.starts_with("199/")),
                    "{second:?}"
                );
            }
            for key in keys {
                assert!(partition.contains(&key));
                assert!(union.insert(key), "{url}");
            }
        }
        assert_eq!(
            union.into_iter().collect::<Vec<_>>(),
            all.into_keys().collect::<Vec<_>>()
        );

        let pool = connect(url).await;
        exec(&pool, &format!("DROP TABLE {table}")).await;
        pool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_partitions_split_the_table() {
        partitions_split_the_table(POSTGRES_URL, "TIMESTAMPTZ").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mariadb_partitions_split_the_table() {
        partitions_split_the_table(MARIADB_URL, "DATETIME(6)").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_partitions_split_the_table_client_side() {
        let dir = tempfile::tempdir().unwrap();
        partitions_split_the_table(&sqlite_url(&dir), "TEXT").await;
    }

    /// A NULL key column fails the checks of exactly one partition (partition 0), in SQL
    /// and in SQLite's own filtering alike.
    async fn a_null_key_fails_partition_zero_only(url: &str) {
        let table = partition_table(url, "TEXT").await;
        let pool = connect(url).await;
        exec(
            &pool,
            &format!("ALTER TABLE {table} ADD COLUMN tag2 VARCHAR(20)"),
        )
        .await;
        exec(
            &pool,
            &format!("UPDATE {table} SET tag2 = tag WHERE id <> 7"),
        )
        .await;
        pool.close().await;
        let make = || {
            let options = SqlSourceOptions {
                key: vec!["id".into(), "tag2".into()],
                ..options_for(url, &table, None)
            };
            Box::new(SqlSource::new("rows", options).unwrap())
        };
        let mut failed = Vec::new();
        for index in 0..3 {
            match crate::testing::scan_partition(make(), Partition::new(index, 3)).await {
                Ok(_) => {}
                Err(err) => {
                    assert!(err.to_string().contains("not_null"), "{url}: {err}");
                    failed.push(index);
                }
            }
        }
        assert_eq!(failed, [0], "{url}");
        let pool = connect(url).await;
        exec(&pool, &format!("DROP TABLE {table}")).await;
        pool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_null_key_fails_the_checks_of_partition_zero_only() {
        a_null_key_fails_partition_zero_only(POSTGRES_URL).await;
        a_null_key_fails_partition_zero_only(MARIADB_URL).await;
        let dir = tempfile::tempdir().unwrap();
        a_null_key_fails_partition_zero_only(&sqlite_url(&dir)).await;
    }
}
