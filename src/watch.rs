//! Watch mode: every configured source is followed, and each batch of changes it reports
//! runs through the same pipeline round as `sync` (gate, extract, chunk, embed, store,
//! ledger, sweep), recorded as a run.
//!
//! Invariant: the index a watcher keeps equals the one a fresh `sync` of the same tree
//! builds. Rounds are the sync pipeline applied to exactly the paths that changed, and
//! whatever events cannot vouch for (overflow, watcher errors, a failed round) becomes a
//! full rescan.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freshet_connectors::WatchControl;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::index::Index;
use crate::ledger::{Lease, LedgerError, WorkerMode};
use crate::pipeline::{build_source, Round, RoundEnd, RunReport, SourceStats, SyncOptions};
use crate::retry::Transient;
use crate::telemetry::{record_round, Health, LiveCounters};
use crate::units::Unit;
use crate::{Error, Result};

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

/// How often a watcher balances its units (takes free ones, gives extra ones back, checks
/// its leases): the takeover time is the lease timeout plus at most this.
const UNIT_TICK: Duration = Duration::from_secs(1);
/// A unit whose follower stopped on an error is taken again after this long.
const UNIT_RETRY: Duration = Duration::from_secs(5);

/// The running unit followers: each ends with its unit id and how it ended.
type Followers<'a> = FuturesUnordered<BoxFuture<'a, (String, Result<Option<String>>)>>;

/// A unit this watcher follows.
struct Held {
    lease: Lease,
    /// Stops the unit's follower (rebalancing, or the lease was lost).
    stop: CancellationToken,
    since: Instant,
}

impl Index {
    /// Follows this worker's share of the units: each one first catches up (its first
    /// round is a full scan, as `sync` does), then follows changes, until
    /// `options.cancel`. With a shared ledger, watchers on several hosts split the units
    /// evenly, take over a dead or stalled worker's units, and rebalance as workers join
    /// and leave; alone, a watcher holds every unit. Returns once every follower stopped.
    pub async fn watch(&self, options: &WatchOptions) -> Result<()> {
        let units = crate::units::all(&self.config);
        let caught_up: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut stopped: HashSet<String> = HashSet::new();
        let mut retry_at: HashMap<String, Instant> = HashMap::new();
        let mut followers = FuturesUnordered::new();
        // Workers start at different units, so that they do not all contend for the first.
        let offset =
            (crate::pipeline::stable_hash(self.leases.worker()) as usize) % units.len().max(1);
        let mut tick = tokio::time::interval(UNIT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut fatal = None;
        loop {
            tokio::select! {
                biased;
                _ = options.cancel.cancelled() => break,
                Some((unit_id, outcome)) = followers.next(), if !followers.is_empty() => {
                    let outcome: Result<Option<String>> = outcome;
                    if let Some(gone) = held.remove(&unit_id) {
                        if let Err(err) = self.leases.release(&gone.lease).await {
                            tracing::warn!(unit = %unit_id, error = %err, "could not release the unit");
                        }
                    }
                    caught_up.lock().expect("watch state lock").remove(&unit_id);
                    match outcome {
                        Ok(None) => {}
                        Ok(Some(err)) => {
                            tracing::error!(unit = %unit_id, error = %err, "a source stopped");
                            stopped.insert(unit_id);
                        }
                        Err(Error::Ledger(LedgerError::LeaseLost { .. })) => {
                            tracing::warn!(unit = %unit_id, "lost the unit to another worker");
                            retry_at.insert(unit_id, Instant::now() + UNIT_RETRY);
                        }
                        Err(err) if err.is_transient() => {
                            tracing::error!(unit = %unit_id, error = %err, "following the unit failed; trying again soon");
                            retry_at.insert(unit_id, Instant::now() + UNIT_RETRY);
                        }
                        Err(err) => {
                            fatal = Some(err);
                            options.cancel.cancel();
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Err(err) = self
                        .balance_units(&units, offset, &mut held, &stopped, &mut retry_at, &mut followers, &caught_up, options)
                        .await
                    {
                        tracing::error!(error = %err, "could not balance work units with the shared ledger; retrying");
                    }
                }
            }
        }
        // Followers stop with the cancellation; their units go back to the ledger.
        while let Some((unit_id, _)) = followers.next().await {
            if let Some(gone) = held.remove(&unit_id) {
                let _ = self.leases.release(&gone.lease).await;
            }
        }
        metrics::gauge!("freshet_units_held").set(0.0);
        match fatal {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// One balancing step: drops leases that were lost, gives back units beyond the fair
    /// share, takes free units up to it, and hands a held unit's noted repairs to its
    /// follower.
    #[allow(clippy::too_many_arguments)]
    async fn balance_units<'a>(
        &'a self,
        units: &'a [(&'a SourceConfig, Unit)],
        offset: usize,
        held: &mut HashMap<String, Held>,
        stopped: &HashSet<String>,
        retry_at: &mut HashMap<String, Instant>,
        followers: &mut Followers<'a>,
        caught_up: &'a Mutex<HashSet<String>>,
        options: &'a WatchOptions,
    ) -> Result<()> {
        // Lost leases: their followers stop before writing anything more.
        for (unit_id, unit) in held.iter() {
            if !unit.stop.is_cancelled() && !self.leases.still_held(&unit.lease).await? {
                tracing::warn!(unit = %unit_id, "this worker no longer holds the unit; stopping its follower");
                unit.stop.cancel();
            }
        }
        let workers = self.leases.live_workers(WorkerMode::Watch).await?.len();
        let share = crate::units::fair_share(units.len(), workers);
        let mut active: Vec<(&String, &Held)> = held
            .iter()
            .filter(|(_, h)| !h.stop.is_cancelled())
            .collect();
        if active.len() > share {
            // The most recently taken go back first: the others have caught up already.
            active.sort_by_key(|(_, h)| std::cmp::Reverse(h.since));
            for (unit_id, unit) in active.iter().take(active.len() - share) {
                tracing::info!(unit = %unit_id, workers, share, "giving the unit back to balance the workers");
                unit.stop.cancel();
            }
        } else if active.len() < share {
            let mut wanted = share - active.len();
            let now = Instant::now();
            for i in 0..units.len() {
                if wanted == 0 {
                    break;
                }
                let (config, unit) = &units[(i + offset) % units.len()];
                if held.contains_key(&unit.id)
                    || stopped.contains(&unit.id)
                    || retry_at.get(&unit.id).is_some_and(|at| *at > now)
                {
                    continue;
                }
                let Some(lease) = self.leases.try_acquire(&unit.id, WorkerMode::Watch).await?
                else {
                    continue;
                };
                wanted -= 1;
                retry_at.remove(&unit.id);
                if lease.taken_over {
                    metrics::counter!("freshet_lease_takeovers_total").increment(1);
                    tracing::warn!(unit = %unit.id, "took over a unit whose holder died or stalled; catching up from the ledger");
                } else {
                    tracing::info!(unit = %unit.id, "following the unit");
                }
                let repaired = self
                    .ledger
                    .take_repairs(&unit.source_id, unit.partition)
                    .await?;
                if repaired > 0 {
                    tracing::warn!(unit = %unit.id, documents = repaired, "re-indexing documents a former holder wrote after losing the unit");
                }
                let stop = options.cancel.child_token();
                held.insert(
                    unit.id.clone(),
                    Held {
                        lease: lease.clone(),
                        stop: stop.clone(),
                        since: Instant::now(),
                    },
                );
                followers.push(Box::pin(
                    self.follow_unit(config, unit, lease, stop, caught_up, options),
                ));
            }
        }
        // Documents a former holder wrote after losing a unit: redone by a full rescan.
        for (unit_id, unit) in held.iter() {
            let Some((_, config_unit)) = units.iter().find(|(_, u)| &u.id == unit_id) else {
                continue;
            };
            if !unit.stop.is_cancelled()
                && self
                    .ledger
                    .take_repairs(&config_unit.source_id, config_unit.partition)
                    .await?
                    > 0
            {
                tracing::warn!(unit = %unit_id, "a former holder wrote after losing the unit; rescanning to re-index those documents");
                options.control.request_rescan();
            }
        }
        let live = held.values().filter(|h| !h.stop.is_cancelled()).count();
        metrics::gauge!("freshet_units_held").set(live as f64);
        let all_mine_caught_up = {
            let done = caught_up.lock().expect("watch state lock");
            held.iter()
                .filter(|(_, h)| !h.stop.is_cancelled())
                .all(|(id, _)| done.contains(id))
        };
        if all_mine_caught_up {
            options.health.ready.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Follows one unit until `stop`: catches up, then indexes each batch of changes.
    async fn follow_unit(
        &self,
        config: &SourceConfig,
        unit: &Unit,
        lease: Lease,
        stop: CancellationToken,
        caught_up: &Mutex<HashSet<String>>,
        options: &WatchOptions,
    ) -> (String, Result<Option<String>>) {
        let sync_options = SyncOptions {
            allow_mass_delete: options.allow_mass_delete,
            live: options.live.clone(),
            cancel: stop,
            ..SyncOptions::default()
        };
        let source = match build_source(
            config,
            self.config.watch.settings(),
            Some(options.control.clone()),
        ) {
            Ok(source) => source,
            Err(err) => return (unit.id.clone(), Err(err)),
        };
        let (rounds_tx, mut rounds) = tokio::sync::mpsc::channel(16);
        let drive = self.drive_source(
            source,
            unit,
            Some(lease),
            &sync_options,
            true,
            Some(options.control.clone()),
            rounds_tx,
        );
        let finish = async {
            while let Some(round) = rounds.recv().await {
                let full_scan_done = round.end == RoundEnd::Full && round.stats.error.is_none();
                if let Err(err) = self
                    .finish_round(&unit.id, round, options, full_scan_done)
                    .await
                {
                    tracing::error!(error = %err, "could not record a round");
                }
                // After the round is recorded and reported: readiness implies both.
                if full_scan_done {
                    caught_up
                        .lock()
                        .expect("watch state lock")
                        .insert(unit.id.clone());
                }
            }
        };
        let (outcome, ()) = tokio::join!(drive, finish);
        (unit.id.clone(), outcome)
    }

    /// Publishes, records and reports one finished round.
    async fn finish_round(
        &self,
        unit: &str,
        round: Round,
        options: &WatchOptions,
        full_scan_done: bool,
    ) -> Result<()> {
        let stats = round.stats;
        let status = stats.status();
        let lag = round.first_event.map(|at| at.elapsed());
        let complete = full_scan_done
            && self
                .ledger
                .units_scanned_into(&crate::units::ids(&self.config), &self.info.collection)
                .await?;
        if complete {
            // A new model's collection serves queries once every unit is in it.
            self.publish_collection(true).await?;
        } else if stats.changed_anything() {
            self.publish_collection(false).await?;
        }
        if stats.points_upserted + stats.points_deleted > 0 {
            // Writes of other units wait while the embedded engine optimises.
            self.maintain_store().await;
        }
        record_round(&stats, status, lag);
        self.ledger
            .record_unit_round(unit, lag.map(|l| l.as_millis() as i64))
            .await?;
        if let Some(lag) = lag {
            metrics::gauge!("freshet_unit_lag_seconds", "unit" => unit.to_string())
                .set(lag.as_secs_f64());
        }
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
            units_elsewhere: Vec::new(),
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
                    self.leases.worker(),
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
        Ok(())
    }
}
