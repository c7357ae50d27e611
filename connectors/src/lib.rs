//! Where freshet's bytes and rows come from: sources push [`Change`]s into a bounded
//! channel and know nothing about chunks, vectors or the ledger.
//!
//! Invariant: a source only ever reports what it observed. A full scan ends in exactly one
//! [`Change::ScanComplete`], and only after every document of the scan was sent, so the
//! consumer may treat "not seen before `ScanComplete`" as "deleted". A partial scan (a
//! watcher rescanning what changed) ends in [`Change::ScopeComplete`] naming exactly the
//! key ranges it covered. A scan that could not finish (missing root, I/O error on a
//! directory) ends in an error, or in [`Change::ScanAborted`] when the source keeps
//! following, never in a completion marker.

pub mod fs;
mod fs_watch;
pub mod partition;
pub mod sql;
pub mod testing;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use fs::{content_hash, FolderSource, FolderSourceOptions, ReadError};
pub use fs_watch::{WatchControl, WatchSettings};
pub use partition::Partition;
pub use sql::{Checks, OnViolation, SqlSource, SqlSourceOptions};

/// A document's identity inside one source, stable across runs (for folders: the path
/// relative to the root, with `/` separators).
pub type DocKey = String;

/// Where a document's bytes are read from. Folder sources hand out paths so that the
/// consumer reads only the documents whose version changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocContent {
    /// Read the file at this absolute path when needed.
    File(PathBuf),
    /// Bytes the source already holds (e.g. a rendered database row).
    Inline(Vec<u8>),
}

/// One document as a source sees it, before anything reads or parses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDoc {
    pub key: DocKey,
    /// Cheap version hint (mtime + size, ETag, updated_at). Equal hints mean "unchanged"
    /// without reading the content; different hints only mean "maybe changed".
    pub version: String,
    /// Size in bytes when the source knows it without reading (used for size limits).
    pub size: Option<u64>,
    pub content: DocContent,
    /// What the content is when the key has no telling extension (`"text"` for rendered
    /// rows); `None`: judged by the key's extension.
    pub media: Option<String>,
    /// Extra payload fields every chunk of the document carries (a row's table, key
    /// values and metadata columns, for filtering).
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// What a source reports. Each scan ends in one marker (`ScanComplete`, `ScopeComplete`
/// or `ScanAborted`); a consumer processes everything up to a marker as one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert(RawDoc),
    /// The document is gone (a source that observes deletions directly).
    Delete(DocKey),
    /// Every document that exists was sent since the scan began.
    ScanComplete,
    /// Every document that exists under these scopes was sent since this partial scan
    /// began. A scope covers the key itself and every key below `scope/`; the empty scope
    /// covers the whole source.
    ScopeComplete {
        scopes: Vec<DocKey>,
        /// When the oldest change this scan answers was observed (for lag metrics).
        first_event: Option<Instant>,
    },
    /// A scan of a following source could not finish: what it sent is real, but nothing
    /// may be concluded about deletions.
    ScanAborted {
        reason: String,
    },
    /// The document exists and has not changed since the position in
    /// [`SourceContext::cursor`] (a cursor-tracked table's untouched row): seen, not read.
    Unchanged(DocKey),
    /// The document exists but failed the source's data-quality checks: recorded with the
    /// reason and not indexed (its last good version, if any, keeps being served).
    Quarantine {
        key: DocKey,
        version: String,
        reason: String,
    },
    /// How far this scan read; the consumer commits it once the scan's round completed,
    /// and hands it back in [`SourceContext::cursor`] next time.
    Cursor(String),
    /// The outcome of the scan's data-quality checks, for `freshet status`.
    Checked(CheckReport),
}

/// What a scan's data-quality checks found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// `passed`, `failed` (nothing from the scan was written) or `quarantined` (bad rows
    /// set aside, the rest indexed).
    pub outcome: String,
    pub rows: u64,
    pub violations: u64,
    /// The first violations, each naming the rule, the column and the row key.
    pub examples: Vec<String>,
}

impl Change {
    /// Whether this change ends a scan (and so a round).
    pub fn ends_scan(&self) -> bool {
        matches!(
            self,
            Self::ScanComplete | Self::ScopeComplete { .. } | Self::ScanAborted { .. }
        )
    }
}

/// Whether `key` lies in `scope`: the key itself, or below `scope/`. The empty scope
/// covers every key.
pub fn in_scope(scope: &str, key: &str) -> bool {
    scope.is_empty()
        || key == scope
        || (key.len() > scope.len()
            && key.starts_with(scope)
            && key.as_bytes()[scope.len()] == b'/')
}

/// What a source gets to talk to the pipeline with.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub changes: mpsc::Sender<Change>,
    pub cancel: CancellationToken,
    /// `false` for a one-off sync: scan, send `ScanComplete`, return. `true` for watch
    /// mode: scan, then report changes (as partial scans) until cancelled.
    pub follow: bool,
    /// The position the last completed scan reached (see [`Change::Cursor`]); `None`
    /// means "scan everything". The consumer updates it after each completed round.
    pub cursor: Arc<Mutex<Option<String>>>,
    /// The share of the source's documents this scan covers (a work unit that is one
    /// partition of the source); `None`: every document. A source should read only the
    /// partition's documents where it can; the consumer ignores any others it sends.
    pub partition: Option<Partition>,
}

impl SourceContext {
    /// Sends one change; waits while the pipeline is busy (the channel is the only
    /// backpressure a source needs). Errors when the pipeline has gone away or the run was
    /// cancelled.
    /// The committed cursor, if any.
    pub fn committed_cursor(&self) -> Option<String> {
        self.cursor.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Whether the document with this key belongs to the scan's partition.
    pub fn wants(&self, key: &str) -> bool {
        self.partition.is_none_or(|p| p.contains(key))
    }

    pub async fn send(&self, change: Change) -> Result<(), SourceError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(SourceError::Cancelled),
            sent = self.changes.send(change) => sent.map_err(|_| SourceError::Cancelled),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_id}`: root {path} is missing or not a directory: {reason}; fix the path in the config (nothing was deleted from the index)")]
    RootUnavailable {
        source_id: String,
        path: PathBuf,
        reason: String,
    },
    #[error("source `{source_id}`: the scan could not finish: {reason} (nothing was deleted from the index; the next run retries)")]
    ScanFailed { source_id: String, reason: String },
    #[error("source `{source_id}`: invalid configuration: {reason}")]
    Config { source_id: String, reason: String },
    #[error("the run was cancelled")]
    Cancelled,
}

impl SourceError {
    /// Transient errors are worth retrying later; the others need the user to act.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::ScanFailed { .. })
    }
}

/// A place documents come from.
#[async_trait]
pub trait Source: Send {
    fn id(&self) -> &str;
    /// Whether scans use [`SourceContext::cursor`] (so the consumer looks it up).
    fn uses_cursor(&self) -> bool {
        false
    }
    /// Scan (ending in `ScanComplete`), then follow changes until cancelled when
    /// `cx.follow` is set.
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError>;
}

impl fmt::Display for DocContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Inline(bytes) => write!(f, "<{} inline bytes>", bytes.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_the_key_and_what_is_below_it_only() {
        assert!(in_scope("", "a/b.md"));
        assert!(in_scope("a", "a"));
        assert!(in_scope("a", "a/b.md"));
        assert!(!in_scope("a", "ab.md"));
        assert!(!in_scope("a", "a.md"));
        assert!(!in_scope("a/b", "a"));
    }
}
