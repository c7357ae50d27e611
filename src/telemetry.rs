//! Logging setup and the live counters a progress display reads.
//!
//! Invariant: logs go to stderr, so stdout carries only results (`--json` output stays
//! machine-readable).

use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

/// Installs the `tracing` subscriber: `RUST_LOG` wins, else `warn` (quiet), `info`
/// (verbose) or `debug` (very verbose); JSON lines when `json` is set.
pub fn init_logging(verbosity: u8, json: bool) {
    let default = match verbosity {
        // qdrant-edge warns about process-wide flags it never lets an embedder set.
        0 => "warn,ort=error,qdrant_edge=error",
        1 => "info,ort=warn,qdrant_edge=error",
        _ => "debug,ort=info,qdrant_edge=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Counters updated by the pipeline as it goes; cheap to read from another task.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub scanned: AtomicU64,
    pub finished: AtomicU64,
    pub chunks_embedded: AtomicU64,
}

impl LiveCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
