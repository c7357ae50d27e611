//! The run over work units: a sync takes each configured unit (a source, or a partition
//! of one) that no other worker covers, runs one full-scan round over it, and records one
//! run — a unit is synced only while this worker holds its lease.

use std::time::{Duration, Instant};

use freshet_connectors::{Source, WatchSettings};
use tokio::sync::mpsc;

use super::{
    build_source, totals, FailureNote, PlannedChange, RunReport, SourceStats, SyncOptions,
    MAX_PLANNED, MAX_REPORTED_FAILURES,
};
use crate::config::SourceConfig;
use crate::index::Index;
use crate::ledger::{now_ms, Lease, WorkerMode};
use crate::units::Unit;
use crate::{Error, Result};

/// Whether a sync run may take a unit.
enum Taken {
    Lease(Lease),
    /// Another worker covers it (synced it during this run, or follows it).
    Elsewhere(&'static str),
    /// Another worker is syncing it now: ask again later.
    Busy,
}

/// Where a unit's source comes from: built from its config entry (any number of times),
/// or handed in by a library user (once).
enum SourceOrigin<'a> {
    Config(&'a SourceConfig),
    Given(Option<Box<dyn Source>>),
}

struct UnitJob<'a> {
    unit: Unit,
    origin: SourceOrigin<'a>,
}

impl UnitJob<'_> {
    fn source(&mut self) -> Result<Box<dyn Source>> {
        match &mut self.origin {
            SourceOrigin::Config(config) => build_source(config, WatchSettings::default(), None),
            SourceOrigin::Given(source) => source
                .take()
                .ok_or_else(|| Error::Task("a given source can run once".into())),
        }
    }
}

/// How long a sync waits before asking again for units other workers hold.
const UNIT_POLL: Duration = Duration::from_secs(1);

impl Index {
    /// Syncs every configured unit (a source, or a partition of one) once: index what
    /// changed, remove what is gone. Workers sharing a ledger split the units: each takes
    /// the free ones, and a unit another worker synced since this run began, or one a
    /// watcher follows, is left to it.
    pub async fn sync(&self, options: &SyncOptions) -> Result<RunReport> {
        let jobs = crate::units::all(&self.config)
            .into_iter()
            .map(|(config, unit)| UnitJob {
                unit,
                origin: SourceOrigin::Config(config),
            })
            .collect();
        self.sync_units(jobs, options).await
    }

    /// What the next sync would add, update, delete and embed, without writing anything.
    pub async fn plan(&self) -> Result<RunReport> {
        self.sync(&SyncOptions {
            dry_run: true,
            allow_mass_delete: true,
            ..SyncOptions::default()
        })
        .await
    }

    /// Syncs these sources once (one unit each), recording one run. Library users can
    /// bring their own [`Source`] implementations.
    pub async fn sync_sources(
        &self,
        sources: Vec<Box<dyn Source>>,
        options: &SyncOptions,
    ) -> Result<RunReport> {
        let jobs = sources
            .into_iter()
            .map(|source| UnitJob {
                unit: Unit::whole(source.id()),
                origin: SourceOrigin::Given(Some(source)),
            })
            .collect();
        self.sync_units(jobs, options).await
    }

    async fn sync_units(&self, jobs: Vec<UnitJob<'_>>, options: &SyncOptions) -> Result<RunReport> {
        let started = Instant::now();
        let unit_ids: Vec<String> = jobs.iter().map(|j| j.unit.id.clone()).collect();
        let (run_id, run_started_ms) = if options.dry_run {
            (0, now_ms())
        } else {
            let live = self.leases.live_workers(WorkerMode::Sync).await?;
            let started_ms = now_ms();
            let id = self
                .ledger
                .start_run(&unit_ids, self.leases.worker(), &live)
                .await?;
            // Syncs started together on several workers form one run: a unit any of them
            // completed since the earliest one began is not synced again.
            let joined = self.ledger.joined_run_start(&live, started_ms).await?;
            (id, joined)
        };
        let mut stats_per_source = Vec::new();
        let mut failures = Vec::new();
        let mut planned = Vec::new();
        let mut first_error = None;
        let mut elsewhere = Vec::new();
        let mut pending: Vec<UnitJob> = jobs;
        let mut announced_wait = false;
        'units: while !pending.is_empty() {
            let mut progressed = false;
            let mut waiting = Vec::new();
            for mut job in std::mem::take(&mut pending) {
                if options.cancel.is_cancelled() {
                    break 'units;
                }
                let lease = if options.dry_run {
                    None
                } else {
                    match self.take_unit(&job.unit, run_started_ms).await? {
                        Taken::Lease(lease) => Some(lease),
                        Taken::Elsewhere(why) => {
                            tracing::info!(unit = %job.unit.id, "{why}");
                            elsewhere.push(job.unit.id.clone());
                            progressed = true;
                            continue;
                        }
                        Taken::Busy => {
                            waiting.push(job);
                            continue;
                        }
                    }
                };
                progressed = true;
                let unit = job.unit.clone();
                let outcome = match job.source() {
                    Ok(source) => self.sync_unit(source, &unit, lease.clone(), options).await,
                    Err(err) => Err(err),
                };
                if let Some(lease) = &lease {
                    if let Err(err) = self.leases.release(lease).await {
                        tracing::warn!(unit = %unit.id, error = %err, "could not release the unit (it is freed when this process ends)");
                    }
                }
                let (stats, unit_failures, unit_planned) = match outcome {
                    Ok(done) => done,
                    Err(err @ Error::Injected(_)) => return Err(err),
                    Err(err) => {
                        tracing::error!(unit = %unit.id, error = %err, "unit sync failed");
                        let stats = SourceStats {
                            source_id: unit.id.clone(),
                            error: Some(err.to_string()),
                            ..SourceStats::default()
                        };
                        (stats, Vec::new(), Vec::new())
                    }
                };
                if first_error.is_none() {
                    first_error = stats.error.clone();
                }
                failures.extend(unit_failures);
                planned.extend(unit_planned);
                stats_per_source.push(stats);
            }
            pending = waiting;
            if !pending.is_empty() && !progressed {
                if !announced_wait {
                    tracing::info!(
                        units = pending.len(),
                        "waiting for units other workers are syncing"
                    );
                    announced_wait = true;
                }
                tokio::select! {
                    _ = options.cancel.cancelled() => break,
                    _ = tokio::time::sleep(UNIT_POLL) => {}
                }
            }
        }
        let totals = totals(&stats_per_source);
        let status = if options.dry_run {
            "planned"
        } else if options.cancel.is_cancelled() {
            "interrupted"
        } else if first_error.is_some() {
            "failed"
        } else if totals.failed + totals.quarantined > 0 {
            "completed_with_failures"
        } else {
            "completed"
        };
        failures.truncate(MAX_REPORTED_FAILURES);
        planned.truncate(MAX_PLANNED);
        let report = RunReport {
            run_id,
            status: status.to_string(),
            duration_ms: started.elapsed().as_millis() as u64,
            sources: stats_per_source,
            totals,
            failures,
            planned,
            error: first_error,
            units_elsewhere: elsewhere,
        };
        if !options.dry_run {
            // A new collection (another model) becomes the one queries use only once
            // every configured unit completed a full scan into it (here or on another
            // worker), and never after a run that failed or was stopped.
            let complete = report.error.is_none()
                && !options.cancel.is_cancelled()
                && self
                    .ledger
                    .units_scanned_into(&crate::units::ids(&self.config), &self.info.collection)
                    .await?;
            self.publish_collection(complete).await?;
            if report.totals.points_upserted + report.totals.points_deleted > 0
                && !options.cancel.is_cancelled()
            {
                self.maintain_store().await;
            }
            let stats = serde_json::to_value(&report).expect("report serializes");
            self.ledger
                .finish_run(run_id, status, &stats, report.error.as_deref())
                .await?;
        }
        Ok(report)
    }

    /// The store's housekeeping after writes (the embedded engine's HNSW indexing). It
    /// changes no point, so a failure is logged and the sync still counts.
    pub(crate) async fn maintain_store(&self) {
        match self.store.maintain().await {
            Ok(Some(done)) => tracing::info!("{done}"),
            Ok(None) => {}
            Err(err) => {
                // Either nothing changed (queries stay correct, only slower), or the
                // error says the store must be opened again.
                tracing::warn!(error = %err, "store housekeeping failed")
            }
        }
    }

    /// Takes a unit for this sync run, unless another worker covers it.
    async fn take_unit(&self, unit: &Unit, run_started_ms: i64) -> Result<Taken> {
        let collection = &self.info.collection;
        let done_elsewhere = || async {
            self.ledger
                .unit_scanned_since(&unit.id, collection, run_started_ms)
                .await
        };
        if done_elsewhere().await? {
            return Ok(Taken::Elsewhere(
                "another worker synced this unit during this run",
            ));
        }
        let Some(lease) = self.leases.try_acquire(&unit.id, WorkerMode::Sync).await? else {
            let followed = self
                .leases
                .holders()
                .await?
                .iter()
                .any(|h| h.unit == unit.id && h.live && h.mode == WorkerMode::Watch.as_str());
            return Ok(if followed {
                Taken::Elsewhere("a watching worker follows this unit")
            } else {
                Taken::Busy
            });
        };
        // Another worker may have finished it between the check and the lock.
        if done_elsewhere().await? {
            self.leases.release(&lease).await?;
            return Ok(Taken::Elsewhere(
                "another worker synced this unit during this run",
            ));
        }
        let repaired = self
            .ledger
            .take_repairs(&unit.source_id, unit.partition)
            .await?;
        if repaired > 0 {
            tracing::warn!(unit = %unit.id, documents = repaired, "re-indexing documents a former holder wrote after losing the unit");
        }
        if lease.taken_over {
            metrics::counter!("freshet_lease_takeovers_total").increment(1);
        }
        Ok(Taken::Lease(lease))
    }

    /// One unit, one full scan: the round that `sync` and `plan` run.
    async fn sync_unit(
        &self,
        source: Box<dyn Source>,
        unit: &Unit,
        lease: Option<Lease>,
        options: &SyncOptions,
    ) -> Result<(SourceStats, Vec<FailureNote>, Vec<PlannedChange>)> {
        let mut stats = SourceStats::default();
        let mut failures = Vec::new();
        let mut planned = Vec::new();
        let (rounds_tx, mut rounds) = mpsc::channel(4);
        let drive = self.drive_source(source, unit, lease, options, false, None, rounds_tx);
        let collect = async {
            while let Some(round) = rounds.recv().await {
                stats.absorb(&round.stats);
                failures.extend(round.failures);
                planned.extend(round.planned);
            }
        };
        let (source_error, ()) = tokio::join!(drive, collect);
        let source_error = source_error?;
        stats.source_id = unit.id.clone();
        if let Some(err) = source_error {
            // The scan did not finish: what it reported is indexed, nothing is deleted.
            stats.error = Some(err);
        }
        Ok((stats, failures, planned))
    }
}
