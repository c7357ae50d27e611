//! The SQL source: a table or a SELECT over PostgreSQL, MySQL/MariaDB or SQLite becomes
//! one document per row, its text rendered from a template over the row's columns and its
//! key made of the key columns.
//!
//! Invariant: a scan reports every row the query returns exactly once and ends in
//! `ScanComplete` only after the last row was read; a connection or query failure ends
//! the scan before that, so nothing is concluded about deletions. Values are read as the
//! database itself renders them as text, so what is embedded does not depend on a
//! driver's type mapping. The connection URL (a secret) is never logged or reported.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tracing::{debug, warn};

use crate::{content_hash, Change, DocContent, RawDoc, Source, SourceContext, SourceError};

/// Which SQL dialect a URL speaks (identifier quoting and the text cast differ).
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
    /// How often a following source scans again.
    pub poll_interval: Duration,
}

pub struct SqlSource {
    id: String,
    options: SqlSourceOptions,
    dialect: Dialect,
    template: Template,
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
        let template = Template::parse(&options.text).map_err(config)?;
        Ok(Self {
            id,
            options,
            dialect,
            template,
        })
    }

    /// Every column a scan reads: key, template and metadata columns, each once.
    fn columns(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.options
            .key
            .iter()
            .chain(self.template.columns())
            .chain(&self.options.metadata)
            .filter(|c| seen.insert(c.as_str()))
            .cloned()
            .collect()
    }

    /// The scan's SELECT: every needed column as text, from the table or the query.
    fn select(&self) -> String {
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
        let from = match (&self.options.table, &self.options.query) {
            (Some(table), _) => d.quote_table(table),
            (None, Some(query)) => format!("({})", query.trim().trim_end_matches(';')),
            (None, None) => unreachable!("checked in new()"),
        };
        format!("SELECT {} FROM {from} AS q", columns.join(", "))
    }

    async fn connect(&self) -> Result<AnyPool, SourceError> {
        sqlx::any::install_default_drivers();
        AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.options.url)
            .await
            .map_err(|err| SourceError::ScanFailed {
                source_id: self.id.clone(),
                reason: format!(
                    "cannot connect to the database (URL from {}): {}",
                    self.options.url_origin,
                    redact(&err.to_string(), &self.options.url)
                ),
            })
    }

    /// One full scan: every row, then `ScanComplete`.
    async fn scan(&self, pool: &AnyPool, cx: &SourceContext) -> Result<u64, SourceError> {
        let sql = self.select();
        debug!(source = %self.id, sql = %sql, "scanning");
        let columns = self.columns();
        let failed = |err: sqlx::Error| SourceError::ScanFailed {
            source_id: self.id.clone(),
            reason: format!(
                "the query failed: {} (nothing was deleted from the index)",
                redact(&err.to_string(), &self.options.url)
            ),
        };
        let mut rows = sqlx::query(&sql).fetch(pool);
        let mut count = 0;
        let mut keys = BTreeSet::new();
        while let Some(row) = rows.try_next().await.map_err(failed)? {
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                values.push(text_value(&row, i));
            }
            let value = |column: &str| -> Option<&str> {
                columns
                    .iter()
                    .position(|c| c == column)
                    .and_then(|i| values[i].as_deref())
            };
            let key_values: Vec<Option<&str>> = self.options.key.iter().map(|k| value(k)).collect();
            if key_values.iter().any(Option::is_none) {
                warn!(source = %self.id, "a row has a NULL key column; skipped");
                continue;
            }
            let key = doc_key(key_values.iter().map(|v| v.unwrap_or_default()));
            if !keys.insert(key.clone()) {
                warn!(source = %self.id, key = %key, "two rows share a key; the first is kept");
                continue;
            }
            let text = self.template.render(&value);
            let mut metadata = serde_json::Map::new();
            if let Some(table) = &self.options.table {
                metadata.insert("table".into(), table.clone().into());
            }
            let row_key: serde_json::Map<String, serde_json::Value> = self
                .options
                .key
                .iter()
                .map(|k| (k.clone(), value(k).unwrap_or_default().into()))
                .collect();
            metadata.insert("row_key".into(), row_key.into());
            for column in &self.options.metadata {
                metadata.insert(
                    column.clone(),
                    value(column).map_or(serde_json::Value::Null, Into::into),
                );
            }
            // The version is what the document is made of: its text and its payload.
            let version = content_hash(
                format!(
                    "{text}\u{1f}{}",
                    serde_json::Value::Object(metadata.clone())
                )
                .as_bytes(),
            );
            let doc = RawDoc {
                key,
                version,
                size: Some(text.len() as u64),
                content: DocContent::Inline(text.into_bytes()),
                media: Some("text".into()),
                metadata,
            };
            cx.send(Change::Upsert(doc)).await?;
            count += 1;
        }
        Ok(count)
    }
}

#[async_trait]
impl Source for SqlSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError> {
        if !cx.follow {
            let pool = self.connect().await?;
            let scanned = self.scan(&pool, &cx).await;
            pool.close().await;
            scanned?;
            return cx.send(Change::ScanComplete).await;
        }
        // Following: scan on an interval. Each scan is complete, so rows deleted in
        // between are found by the sweep, and a failed scan deletes nothing.
        loop {
            let outcome = match self.connect().await {
                Ok(pool) => {
                    let scanned = self.scan(&pool, &cx).await;
                    pool.close().await;
                    scanned
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(_) => cx.send(Change::ScanComplete).await?,
                Err(SourceError::Cancelled) => return Ok(()),
                Err(err) => {
                    warn!(source = %self.id, error = %err, "scan failed; retrying at the next poll");
                    cx.send(Change::ScanAborted {
                        reason: err.to_string(),
                    })
                    .await?;
                }
            }
            tokio::select! {
                _ = cx.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.options.poll_interval) => {}
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
            poll_interval: Duration::from_secs(30),
        };
        let mysql = SqlSource::new("p", options.clone()).unwrap();
        assert_eq!(
            mysql.select(),
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
            .select()
            .ends_with("FROM (SELECT * FROM a JOIN b USING (id)) AS q"));
        assert_eq!(
            redact(
                "error at postgres://u:secret@h/db: secret",
                "postgres://u:secret@h/db"
            ),
            "error at <url>: <password>"
        );
    }
}
