//! freshet keeps vector indexes fresh: sources report what changed, and one pipeline
//! cleans, chunks, embeds and stores it, with a ledger so a re-run does only the work that
//! changed.
//!
//! Invariant (the ledger protocol): the ledger never vouches for points the store lacks.

pub mod chunk;
pub mod config;
pub mod embed;
pub mod eval;
pub mod extract;
pub mod index;
pub mod ledger;
pub mod pipeline;
pub mod rerank;
pub mod retry;
pub mod schedule;
pub mod serve;
pub mod sparse;
pub mod store;
pub mod telemetry;
pub mod units;
pub mod verify;
pub mod watch;

pub use config::Config;
pub use freshet_connectors as connectors;
pub use index::Index;
pub use pipeline::{RunReport, SourceStats, SyncOptions};

/// Everything that can stop a command, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Source(#[from] connectors::SourceError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Embed(#[from] embed::EmbedError),
    #[error("another freshet process is writing to {data_dir}; wait for it to finish (or stop it) and run again (to run several workers, give them a shared ledger: [ledger] url_env)")]
    Locked { data_dir: String },
    #[error("source `{source_id}`: this sync would delete {would_delete} of {total} documents ({share:.0}% > the {limit:.0}% guard); if that is intended, run again with --allow-mass-delete (nothing was deleted)")]
    MassDelete {
        source_id: String,
        would_delete: usize,
        total: usize,
        share: f64,
        limit: f64,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("no index in {data_dir} yet; run `freshet sync` first")]
    NoIndex { data_dir: String },
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("fault injected at {0} (a test or drill stopped the run as a crash would)")]
    Injected(String),
}

use retry::Transient;

impl Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            Error::Ledger(e) => e.is_transient(),
            Error::Store(e) => e.is_transient(),
            Error::Embed(e) => e.is_transient(),
            Error::Source(e) => e.is_transient(),
            Error::Locked { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
