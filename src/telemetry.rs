//! Logging setup, the live counters a progress display reads, and the Prometheus metrics
//! and health state that long-running modes (`watch`, `sync --every`) serve.
//!
//! Invariant: logs go to stderr, so stdout carries only results (`--json` output stays
//! machine-readable); metrics are recorded through the `metrics` facade only, never
//! formatted by hand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::pipeline::SourceStats;

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

    /// Documents taken from sources and not yet settled (the pipeline's queue depth).
    pub fn in_flight(&self) -> u64 {
        Self::get(&self.scanned).saturating_sub(Self::get(&self.finished))
    }
}

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("freshet_change_to_indexed_seconds".into()),
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; freshet metrics go there");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "freshet_documents_indexed_total",
        "Documents added or updated in the index"
    );
    describe_counter!(
        "freshet_documents_deleted_total",
        "Documents removed from the index"
    );
    describe_counter!(
        "freshet_documents_failed_total",
        "Documents that failed (unreadable, corrupt, rejected by the model)"
    );
    describe_counter!(
        "freshet_chunks_embedded_total",
        "Chunks run through the embedding model"
    );
    describe_counter!(
        "freshet_chunks_reused_total",
        "Chunks whose vector was reused from an identical chunk"
    );
    describe_counter!(
        "freshet_runs_total",
        "Sync runs and watch rounds, by outcome"
    );
    describe_counter!(
        "freshet_embed_requests_total",
        "Requests to the embedding service, by outcome (ok, retried, error)"
    );
    describe_counter!(
        "freshet_embed_retries_total",
        "Embedding requests sent again after a 429, a 5xx, a timeout or a lost connection"
    );
    describe_counter!(
        "freshet_embed_tokens_sent_total",
        "Tokens in embedding requests the service answered (counted by the configured tokenizer)"
    );
    describe_gauge!(
        "freshet_embed_throttled_seconds_total",
        Unit::Seconds,
        "Seconds spent waiting because the embedding service said 429 or 503 (only grows)"
    );
    describe_gauge!(
        "freshet_units_held",
        "Work units (sources or partitions) this worker holds and follows"
    );
    describe_counter!(
        "freshet_lease_takeovers_total",
        "Units this worker took over from a worker that died or stalled"
    );
    describe_gauge!(
        "freshet_unit_lag_seconds",
        Unit::Seconds,
        "Per unit: how long the oldest change of its last round waited to be indexed"
    );
    describe_gauge!(
        "freshet_queue_depth",
        "Documents taken from sources and not yet settled"
    );
    describe_gauge!(
        "freshet_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last run or round that completed"
    );
    describe_histogram!(
        "freshet_change_to_indexed_seconds",
        Unit::Seconds,
        "From a file change being observed to its batch being committed"
    );
}

/// Records what a sync run or watch round did.
pub fn record_round(stats: &SourceStats, status: &str, lag: Option<Duration>) {
    let source = stats.source_id.clone();
    metrics::counter!("freshet_documents_indexed_total", "source" => source.clone())
        .increment(stats.added + stats.updated);
    metrics::counter!("freshet_documents_deleted_total", "source" => source.clone())
        .increment(stats.deleted);
    metrics::counter!("freshet_documents_failed_total", "source" => source.clone())
        .increment(stats.failed);
    metrics::counter!("freshet_chunks_embedded_total", "source" => source.clone())
        .increment(stats.chunks_embedded);
    metrics::counter!("freshet_chunks_reused_total", "source" => source.clone())
        .increment(stats.chunks_reused);
    metrics::counter!("freshet_runs_total", "source" => source.clone(), "status" => status.to_string())
        .increment(1);
    if status != "failed" {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("freshet_last_success_timestamp_seconds", "source" => source.clone())
            .set(unix.as_secs_f64());
    }
    if let Some(lag) = lag {
        metrics::histogram!("freshet_change_to_indexed_seconds", "source" => source)
            .record(lag.as_secs_f64());
    }
}

/// What `/healthz` and `/readyz` report for a long-running process.
#[derive(Debug, Default)]
pub struct Health {
    /// Every source finished its first full scan (the index has caught up).
    pub ready: AtomicBool,
    pub rounds: AtomicU64,
    pub last_success: Mutex<Option<String>>,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub ready: bool,
    pub rounds: u64,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
}

impl Health {
    pub fn record(&self, ok: bool, error: Option<&str>) {
        self.rounds.fetch_add(1, Ordering::SeqCst);
        if ok {
            *self.last_success.lock().expect("health lock") = Some(crate::ledger::now());
        }
        *self.last_error.lock().expect("health lock") = error.map(str::to_string);
    }

    pub fn report(&self) -> HealthReport {
        HealthReport {
            status: "ok",
            ready: self.ready.load(Ordering::SeqCst),
            rounds: self.rounds.load(Ordering::SeqCst),
            last_success: self.last_success.lock().expect("health lock").clone(),
            last_error: self.last_error.lock().expect("health lock").clone(),
        }
    }
}
