//! Watch mode: every configured source is followed, and each batch of changes it reports
//! runs through the same pipeline round as `sync` (gate, extract, chunk, embed, store,
//! ledger, sweep), recorded as a run.
//!
//! Invariant: the index a watcher keeps equals the one a fresh `sync` of the same tree
//! builds. Rounds are the sync pipeline applied to exactly the paths that changed, and
//! whatever events cannot vouch for (overflow, watcher errors, a failed round) becomes a
//! full rescan.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use freshet_connectors::WatchControl;
use tokio_util::sync::CancellationToken;

use crate::index::Index;
use crate::pipeline::{build_source, Round, RoundEnd, RunReport, SourceStats, SyncOptions};
use crate::telemetry::{record_round, Health, LiveCounters};
use crate::Result;

/// Called with each round's report (the CLI prints it as a JSON line).
pub type ReportSink = Arc<dyn Fn(&RunReport) + Send + Sync>;

#[derive(Clone)]
pub struct WatchOptions {
    /// Let rounds delete more than `pipeline.max_delete_share` of a source.
    pub allow_mass_delete: bool,
    /// Stops watching: in-flight work is committed or abandoned cleanly.
    pub cancel: CancellationToken,
    /// Full rescans on request (SIGHUP, tests, drills).
    pub control: Arc<WatchControl>,
    pub live: Arc<LiveCounters>,
    pub health: Arc<Health>,
    pub on_report: Option<ReportSink>,
}

impl std::fmt::Debug for WatchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchOptions")
            .field("allow_mass_delete", &self.allow_mass_delete)
            .finish_non_exhaustive()
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            allow_mass_delete: false,
            cancel: CancellationToken::new(),
            control: Arc::new(WatchControl::default()),
            live: Arc::default(),
            health: Arc::default(),
            on_report: None,
        }
    }
}

impl Index {
    /// Catches up (each source's first round is a full scan, as `sync` does), then follows
    /// changes until `options.cancel`. Returns once every source has stopped.
    pub async fn watch(&self, options: &WatchOptions) -> Result<()> {
        let sync_options = SyncOptions {
            allow_mass_delete: options.allow_mass_delete,
            live: options.live.clone(),
            cancel: options.cancel.clone(),
            ..SyncOptions::default()
        };
        let caught_up: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        let source_count = self.config.sources.len();
        let mut followers = Vec::new();
        for config in &self.config.sources {
            let source = build_source(
                config,
                self.config.watch.settings(),
                Some(options.control.clone()),
            )?;
            let caught_up = &caught_up;
            let sync_options = &sync_options;
            followers.push(async move {
                let (rounds_tx, mut rounds) = tokio::sync::mpsc::channel(16);
                let drive = self.drive_source(
                    source,
                    sync_options,
                    true,
                    Some(options.control.clone()),
                    rounds_tx,
                );
                let finish = async {
                    while let Some(round) = rounds.recv().await {
                        let full_scan_done =
                            round.end == RoundEnd::Full && round.stats.error.is_none();
                        let all_caught_up = {
                            let mut done = caught_up.lock().expect("watch state lock");
                            if full_scan_done {
                                done.insert(round.stats.source_id.clone());
                            }
                            done.len() == source_count
                        };
                        if let Err(err) = self.finish_round(round, options, all_caught_up).await {
                            tracing::error!(error = %err, "could not record a round");
                        }
                    }
                };
                let (outcome, ()) = tokio::join!(drive, finish);
                outcome
            });
        }
        for outcome in futures::future::join_all(followers).await {
            if let Some(err) = outcome? {
                tracing::error!(error = %err, "a source stopped");
            }
        }
        Ok(())
    }

    /// Publishes, records and reports one finished round.
    async fn finish_round(
        &self,
        round: Round,
        options: &WatchOptions,
        all_caught_up: bool,
    ) -> Result<()> {
        let stats = round.stats;
        let status = stats.status();
        let lag = round.first_event.map(|at| at.elapsed());
        if all_caught_up {
            // A new model's collection serves queries once every source is in it.
            self.publish_collection(true).await?;
        } else if stats.changed_anything() {
            self.publish_collection(false).await?;
        }
        record_round(&stats, status, lag);
        let mut report = RunReport {
            run_id: 0,
            status: status.to_string(),
            duration_ms: round.started.elapsed().as_millis() as u64,
            totals: SourceStats {
                source_id: "*".into(),
                ..stats.clone()
            },
            sources: vec![stats.clone()],
            failures: round.failures,
            planned: Vec::new(),
            error: stats.error.clone(),
        };
        if stats.changed_anything() || stats.error.is_some() {
            let value = serde_json::to_value(&report).expect("report serializes");
            report.run_id = self
                .ledger
                .record_run(
                    std::slice::from_ref(&stats.source_id),
                    &round.started_at,
                    status,
                    &value,
                    stats.error.as_deref(),
                )
                .await?;
            tracing::info!(
                source = %stats.source_id,
                added = stats.added,
                updated = stats.updated,
                deleted = stats.deleted,
                failed = stats.failed,
                embedded = stats.chunks_embedded,
                lag_ms = lag.map(|l| l.as_millis() as u64),
                "changes indexed"
            );
        }
        if let Some(sink) = &options.on_report {
            sink(&report);
        }
        // Last, so that whoever waits on health sees the round's report and run too.
        options
            .health
            .record(status != "failed", stats.error.as_deref());
        if all_caught_up {
            options.health.ready.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}
