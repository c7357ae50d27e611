//! The one pipeline: a source's change stream becomes committed batches (gate -> read,
//! extract, chunk -> embed -> store -> ledger), then a sweep removes what the scan no
//! longer saw. Each scan the source reports (up to its marker) is one round: `sync` and
//! `plan` (a dry run) run one round per source, `watch` one round per batch of changes,
//! through the same functions.
//!
//! Invariant (the ledger protocol): the ledger never vouches for points the store lacks.
//! Per batch: (1) the ledger records an intent (`pending`, with the ids about to be
//! written), (2) new points are upserted (applied and durable), (3) stale points are
//! deleted, (4) the final rows are committed in one transaction. A crash anywhere leaves
//! `pending` rows that name every point that may exist, and the next run redoes exactly
//! those documents.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet_connectors::{
    content_hash, in_scope, Change, CheckReport, Checks, DocKey, FolderSource, FolderSourceOptions,
    OnViolation, RawDoc, ReadError, Source, SourceContext, SqlSource, SqlSourceOptions,
    WatchControl, WatchSettings,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chunk::{Chunk, Chunker};
use crate::config::{OnViolationConfig, SourceConfig};
use crate::embed::Embedder;
use crate::extract::{extract, ExtractError, MediaType};
use crate::index::Index;
use crate::ledger::{
    now, now_ms, DocRecord, DocStatus, Lease, Leases, Ledger, LedgerError, WorkerMode,
};
use crate::store::{Filter, Payload, Point, PointId, VectorStore};
use crate::telemetry::LiveCounters;
use crate::units::Unit;
use crate::{Error, Result};
use freshet_connectors::Partition;

/// Whether a sync run may take a unit.
enum Taken {
    Lease(Lease),
    /// Another worker covers it (synced it during this run, or follows it).
    Elsewhere(&'static str),
    /// Another worker is syncing it now: ask again later.
    Busy,
}

/// Changes looked up in the ledger at once (one query) at the gate.
const GATE_BATCH: usize = 256;
/// Prepared documents waiting for the embedder. Bounds memory: each holds its chunks.
const PREPARED_QUEUE: usize = 64;
/// Embedded batches waiting for the store and ledger; 1 lets batch n commit while n+1
/// embeds.
const COMMIT_QUEUE: usize = 1;
/// Ledger keys read per page during the deletion sweep.
const SWEEP_PAGE: usize = 1000;
/// Chunk hashes looked up in the store at once when reusing vectors.
const REUSE_LOOKUP: usize = 512;
/// Attempts for a transient store or ledger error before the run gives up (nothing is
/// marked done for the batch).
const MAX_ATTEMPTS: u32 = 8;
/// Documents a plan lists one by one (the counts cover all of them).
pub const MAX_PLANNED: usize = 10_000;

/// Fixed namespace for point ids: ids are UUIDv5 over (source, document, chunk index).
const POINT_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_2b0c_9a4d_4c53_8e21_f4e5_d6a7_b8c9);

/// The stable id of a chunk's point.
pub fn point_id(source_id: &str, doc_key: &str, chunk_index: u32) -> PointId {
    let name = format!("{source_id}\u{1f}{doc_key}\u{1f}{chunk_index}");
    Uuid::new_v5(&POINT_NAMESPACE, name.as_bytes())
}

/// The steps of a batch commit, where a fault can be injected (tests, chaos drills).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitStep {
    AfterIntent,
    AfterUpsert,
    AfterStaleDelete,
    AfterCommit,
}

/// Called at each [`CommitStep`]; returning `true` aborts the run right there, as a crash
/// would (without cleanup).
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn(CommitStep) -> bool + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Let this sync delete more than `pipeline.max_delete_share` of a source.
    pub allow_mass_delete: bool,
    /// Retry failed documents even if they did not change.
    pub retry_failed: bool,
    /// Plan only: read and chunk what changed, write nothing.
    pub dry_run: bool,
    pub live: Arc<LiveCounters>,
    pub fault: Option<FaultHook>,
    /// Stops the run cleanly: no new documents are taken, batches not yet embedded are
    /// abandoned, embedded ones are committed, and no deletions are concluded.
    pub cancel: CancellationToken,
}

/// What one source's sync did (or, in a plan, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceStats {
    pub source_id: String,
    /// Documents the scan reported.
    pub scanned: u64,
    /// Skipped at the gate: same version hint and pipeline fingerprint, not read.
    pub unchanged: u64,
    /// Read because the version hint changed, but the content hash was the same.
    pub content_unchanged: u64,
    pub added: u64,
    pub updated: u64,
    pub deleted: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Rows the source's data-quality checks set aside (recorded, not indexed).
    pub quarantined: u64,
    /// Chunks run through the embedding model.
    pub chunks_embedded: u64,
    /// Chunks whose vector was reused from an identical chunk already in the index.
    pub chunks_reused: u64,
    /// Milliseconds spent inside the embedding model (the bottleneck by design).
    pub embed_ms: u64,
    /// Milliseconds spent writing the store and committing the ledger.
    pub commit_ms: u64,
    pub points_upserted: u64,
    pub points_deleted: u64,
    /// Whether the scan finished, so deletions were applied.
    pub scan_complete: bool,
    pub error: Option<String>,
}

impl SourceStats {
    /// Adds another round's (or source's) counts to these.
    pub fn absorb(&mut self, other: &SourceStats) {
        self.scanned += other.scanned;
        self.unchanged += other.unchanged;
        self.content_unchanged += other.content_unchanged;
        self.added += other.added;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.quarantined += other.quarantined;
        self.chunks_embedded += other.chunks_embedded;
        self.chunks_reused += other.chunks_reused;
        self.embed_ms += other.embed_ms;
        self.commit_ms += other.commit_ms;
        self.points_upserted += other.points_upserted;
        self.points_deleted += other.points_deleted;
        self.scan_complete |= other.scan_complete;
        if self.error.is_none() {
            self.error = other.error.clone();
        }
    }

    /// `failed` (the source errored), `completed_with_failures` (some documents failed or
    /// were quarantined) or `completed`.
    pub fn status(&self) -> &'static str {
        if self.error.is_some() {
            "failed"
        } else if self.failed + self.quarantined > 0 {
            "completed_with_failures"
        } else {
            "completed"
        }
    }

    /// Whether the round changed the index or the ledger at all.
    pub fn changed_anything(&self) -> bool {
        self.added
            + self.updated
            + self.deleted
            + self.failed
            + self.skipped
            + self.quarantined
            + self.content_unchanged
            > 0
    }
}

/// How a round ended: which marker the source sent, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundEnd {
    /// A full scan finished: every document the ledger has and the scan lacks is gone.
    Full,
    /// A partial scan finished: documents under these scopes that it lacks are gone.
    Scoped(Vec<DocKey>),
    /// The scan could not finish; nothing is concluded about deletions.
    Aborted(String),
    /// The source stopped sending without a marker (it failed, or it is done).
    Closed,
    /// The run was cancelled.
    Cancelled,
}

/// One round of one source: what it did, and how its scan ended.
#[derive(Debug, Clone)]
pub struct Round {
    pub stats: SourceStats,
    pub failures: Vec<FailureNote>,
    pub planned: Vec<PlannedChange>,
    pub end: RoundEnd,
    /// When the oldest change this round answers was observed (watch mode).
    pub first_event: Option<Instant>,
    pub started: Instant,
    pub started_at: String,
}
/// A failed document, for reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureNote {
    pub source_id: String,
    pub doc_key: String,
    pub reason: String,
}

/// One document a plan would touch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    pub source_id: String,
    pub doc_key: String,
    /// `add`, `update`, `delete`, `fail`, `skip` or `touch` (version hint only).
    pub action: &'static str,
    pub chunks: usize,
    pub chunks_to_embed: usize,
}

/// What a sync did, as printed by `freshet sync --json` (and `freshet plan --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// 0 for a plan (plans are not recorded).
    pub run_id: i64,
    /// `completed`, `completed_with_failures` or `failed` (`planned` for a plan).
    pub status: String,
    pub duration_ms: u64,
    pub sources: Vec<SourceStats>,
    pub totals: SourceStats,
    /// Documents that failed in this run (at most [`MAX_REPORTED_FAILURES`]).
    pub failures: Vec<FailureNote>,
    /// For a plan: the documents it would change (at most [`MAX_PLANNED`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PlannedChange>,
    pub error: Option<String>,
    /// Units this run left to other workers sharing the ledger: synced by one of them
    /// during the run, or followed by a watcher.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub units_elsewhere: Vec<String>,
}

pub const MAX_REPORTED_FAILURES: usize = 100;

/// A unit of work for one document after the gate.
#[derive(Debug)]
enum Work {
    /// New or changed content: embed these chunks and replace the document's points.
    Index(PreparedDoc),
    /// Write this ledger row, after deleting `drop_ids` from the store.
    Record {
        record: DocRecord,
        outcome: Outcome,
        drop_ids: Vec<PointId>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    ContentUnchanged,
    Failed,
    Skipped,
    Quarantined,
}

#[derive(Debug)]
struct PreparedDoc {
    key: String,
    version: String,
    hash: String,
    media: MediaType,
    title: Option<String>,
    decode_warning: Option<String>,
    chunks: Vec<Chunk>,
    prior: Option<DocRecord>,
    /// Payload fields the source adds (a row's table, key and metadata columns).
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// A batch ready for the store: prepared documents with one vector per chunk.
struct EmbeddedBatch {
    embed_ms: u64,
    reused: u64,
    docs: Vec<(PreparedDoc, Vec<Vec<f32>>)>,
    records: Vec<(DocRecord, Outcome, Vec<PointId>)>,
    /// Dry run: chunks each document would send to the model, by key.
    to_embed: HashMap<String, usize>,
}

/// Shared, read-only context of one work unit's sync.
struct Ctx {
    source_id: String,
    /// The work unit: the source, or one partition of it.
    unit: String,
    partition: Option<Partition>,
    /// The unit's lease: store writes happen only while it is held, and ledger commits
    /// are fenced by it.
    lease: Option<Lease>,
    leases: Arc<dyn Leases>,
    fingerprint: String,
    collection: String,
    ledger: Ledger,
    embedder: Arc<dyn Embedder>,
    chunker: Arc<Chunker>,
    store: Arc<dyn VectorStore>,
    max_document_bytes: u64,
    parallel_documents: usize,
    commit_batch_chunks: usize,
    max_delete_share: f64,
    retry_failed: bool,
    dry_run: bool,
    live: Arc<LiveCounters>,
    fault: Option<FaultHook>,
    cancel: CancellationToken,
    /// The source's committed change-tracking cursor, shared with the source.
    cursor: Arc<std::sync::Mutex<Option<String>>>,
}

impl Ctx {
    fn fence(&self) -> Option<&crate::ledger::Fence> {
        self.lease.as_ref().and_then(|l| l.fence.as_ref())
    }

    /// Before a store write: the unit must still be this worker's. (Ledger commits check
    /// the fence inside their transaction as well.)
    async fn check_lease(&self) -> Result<()> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if self.leases.still_held(lease).await? {
            Ok(())
        } else {
            Err(LedgerError::LeaseLost {
                unit: self.unit.clone(),
            }
            .into())
        }
    }

    fn check_fault(&self, step: CommitStep) -> Result<()> {
        match &self.fault {
            Some(hook) if (hook.0)(step) => Err(Error::Injected(format!("{step:?}"))),
            _ => Ok(()),
        }
    }

    /// The points a prior row may have in the current collection: what it vouches for,
    /// plus, when a write was interrupted, what that write may have left.
    fn maybe_present(&self, prior: Option<&DocRecord>) -> Vec<PointId> {
        let Some(prior) = prior else {
            return Vec::new();
        };
        if prior.collection != self.collection {
            // Points of another collection (before a model change) go away with it.
            return Vec::new();
        }
        let mut ids = prior.point_ids.clone();
        if let Some(pending) = &prior.pending_point_ids {
            let known: HashSet<PointId> = ids.iter().copied().collect();
            ids.extend(pending.iter().filter(|id| !known.contains(id)));
        }
        ids
    }
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
            let stats = serde_json::to_value(&report).expect("report serializes");
            self.ledger
                .finish_run(run_id, status, &stats, report.error.as_deref())
                .await?;
        }
        Ok(report)
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

    /// Runs a source through the pipeline, one round per scan it reports, sending each
    /// finished round to `rounds`; returns the source's own error, if it ended with one. With
    /// `follow`, this lasts until `options.cancel` (watch mode); a round that fails asks
    /// `control` for a full rescan, which redoes whatever the failure left undone.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn drive_source(
        &self,
        source: Box<dyn Source>,
        unit: &Unit,
        lease: Option<Lease>,
        options: &SyncOptions,
        follow: bool,
        control: Option<Arc<WatchControl>>,
        rounds: mpsc::Sender<Round>,
    ) -> Result<Option<String>> {
        if !options.dry_run {
            self.publish_first_build().await?;
        }
        let ctx = Arc::new(Ctx {
            source_id: source.id().to_string(),
            unit: unit.id.clone(),
            partition: unit.partition,
            lease,
            leases: self.leases.clone(),
            fingerprint: self.fingerprint(),
            collection: self.info.collection.clone(),
            ledger: self.ledger.clone(),
            embedder: self.embedder.clone(),
            chunker: self.chunker.clone(),
            store: self.store.clone(),
            max_document_bytes: self.config.pipeline.max_document_bytes,
            parallel_documents: self.config.parallel_documents(),
            commit_batch_chunks: self.config.pipeline.commit_batch_chunks,
            max_delete_share: self.config.pipeline.max_delete_share,
            retry_failed: options.retry_failed,
            dry_run: options.dry_run,
            live: options.live.clone(),
            fault: options.fault.clone(),
            cancel: options.cancel.clone(),
            cursor: Arc::new(std::sync::Mutex::new(
                // Retrying failed documents means reading them again: no cursor.
                if !source.uses_cursor() || options.retry_failed || options.dry_run {
                    None
                } else {
                    self.ledger
                        .cursor(&unit.id, source.id(), unit.partition, &self.fingerprint())
                        .await?
                },
            )),
        });
        let (change_tx, mut changes) = mpsc::channel(self.config.pipeline.channel_depth);
        let source_cx = SourceContext {
            changes: change_tx,
            cancel: options.cancel.child_token(),
            follow,
            cursor: ctx.cursor.clone(),
            partition: unit.partition,
        };
        let source_task = tokio::spawn(source.run(source_cx));
        let mut outcome = Ok(());
        loop {
            let round = run_round(&ctx, &mut changes, options).await;
            let round = match round {
                Ok(round) => round,
                Err(err @ (Error::Injected(_) | Error::Ledger(LedgerError::LeaseLost { .. }))) => {
                    outcome = Err(err);
                    break;
                }
                Err(err) => {
                    tracing::error!(source = %ctx.source_id, error = %err, "round failed");
                    if !follow {
                        outcome = Err(err);
                        break;
                    }
                    if let Some(control) = &control {
                        // Whatever the failure left undone (pending rows, unread
                        // changes) is redone by a full rescan once things recover.
                        let control = control.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            control.request_rescan();
                        });
                    }
                    let failed = Round {
                        stats: SourceStats {
                            source_id: ctx.source_id.clone(),
                            error: Some(err.to_string()),
                            ..SourceStats::default()
                        },
                        failures: Vec::new(),
                        planned: Vec::new(),
                        end: RoundEnd::Aborted(err.to_string()),
                        first_event: None,
                        started: Instant::now(),
                        started_at: now(),
                    };
                    // A receiver that went away is shutting down too.
                    let _ = rounds.send(failed).await;
                    continue;
                }
            };
            let last = matches!(round.end, RoundEnd::Closed | RoundEnd::Cancelled);
            let empty = last && round.stats.scanned == 0 && !round.stats.changed_anything();
            if !empty {
                let _ = rounds.send(round).await;
            }
            if last {
                break;
            }
        }
        // Dropping the receiver unblocks a source still trying to send.
        drop(changes);
        let source_result = source_task
            .await
            .map_err(|e| Error::Task(format!("source task: {e}")))?;
        outcome?;
        Ok(match source_result {
            Ok(()) | Err(freshet_connectors::SourceError::Cancelled) => None,
            Err(err) => Some(err.to_string()),
        })
    }
}

/// One round: the changes up to the source's next marker go through gate, embed and
/// commit; then the sweep the marker allows. A round that fails part-way discards the rest
/// of its scan, so the next round never mistakes half a scan for a whole one.
async fn run_round(
    ctx: &Arc<Ctx>,
    changes: &mut mpsc::Receiver<Change>,
    options: &SyncOptions,
) -> Result<Round> {
    let started = Instant::now();
    let started_at = now();
    let started_ms = now_ms();
    let (work_tx, work_rx) = mpsc::channel(PREPARED_QUEUE);
    let (batch_tx, batch_rx) = mpsc::channel(COMMIT_QUEUE);
    let mut reached_marker = false;
    let gate = gate_and_prepare(ctx.clone(), changes, work_tx, &mut reached_marker);
    let embed = embed_batches(ctx.clone(), work_rx, batch_tx);
    let commit = commit_batches(ctx.clone(), batch_rx);
    let (gate_result, embed_result, commit_result) = tokio::join!(gate, embed, commit);

    // Later stages first: when one fails, the stages before it fail only because it
    // stopped listening, and the user needs the first cause.
    let staged = commit_result.and_then(|done| {
        embed_result?;
        Ok((done, gate_result?))
    });
    let ((mut stats, failures, mut planned), gate) = match staged {
        Ok(done) => done,
        Err(err) => {
            if !reached_marker {
                discard_rest_of_scan(changes).await;
            }
            return Err(err);
        }
    };
    stats.source_id = ctx.source_id.clone();
    stats.scanned = gate.scanned;
    stats.unchanged = gate.unchanged;
    let scope = match &gate.end {
        RoundEnd::Full => {
            stats.scan_complete = true;
            Some(None)
        }
        RoundEnd::Scoped(scopes) => Some(Some(scopes.as_slice())),
        RoundEnd::Aborted(reason) => {
            stats.error = Some(reason.clone());
            None
        }
        RoundEnd::Closed | RoundEnd::Cancelled => None,
    };
    if gate.end != RoundEnd::Cancelled {
        let swept = sweep(
            ctx,
            scope,
            &gate.seen,
            &gate.deletes,
            options,
            &mut stats,
            &mut planned,
        )
        .await;
        match swept {
            Ok(()) => {}
            Err(err @ Error::MassDelete { .. }) => {
                tracing::error!(source = %ctx.source_id, error = %err, "deletions refused");
                stats.error = Some(err.to_string());
            }
            Err(err) => return Err(err),
        }
    }
    if !ctx.dry_run {
        if let Some(report) = &gate.check {
            let value = serde_json::to_value(report).expect("report serializes");
            ctx.ledger.record_check(&ctx.unit, &value).await?;
        }
        let moved = gate.cursor.is_some() || gate.cursor_invalid;
        if gate.end == RoundEnd::Full && stats.error.is_none() && moved {
            // Only now, with every row of the scan committed, may the cursor move on.
            let cursor = gate.cursor.clone().filter(|_| !gate.cursor_invalid);
            ctx.ledger
                .set_cursor(&ctx.unit, cursor.as_deref(), ctx.fence())
                .await?;
            if let Ok(mut shared) = ctx.cursor.lock() {
                *shared = cursor;
            }
        }
        if gate.end == RoundEnd::Full && stats.error.is_none() {
            // The scan's start bounds what it saw: a sync that began earlier is covered.
            ctx.ledger
                .mark_unit_scanned(&ctx.unit, &ctx.collection, started_ms)
                .await?;
        }
    }
    let (started, started_at) = gate.first_change.unwrap_or((started, started_at));
    Ok(Round {
        stats,
        failures,
        planned,
        end: gate.end,
        first_event: gate.first_event,
        started,
        started_at,
    })
}

/// After a failed round: drops the rest of its scan, up to and including the marker.
async fn discard_rest_of_scan(changes: &mut mpsc::Receiver<Change>) {
    while let Some(change) = changes.recv().await {
        if change.ends_scan() {
            break;
        }
    }
}

/// The source a config entry describes (`watch` and `control` matter in follow mode).
pub fn build_source(
    source: &SourceConfig,
    watch: WatchSettings,
    control: Option<Arc<WatchControl>>,
) -> Result<Box<dyn Source>> {
    Ok(match source {
        SourceConfig::Folder(folder) => Box::new(FolderSource::new(
            folder.id.clone(),
            folder.path.clone(),
            FolderSourceOptions {
                include: folder.include.clone(),
                exclude: folder.exclude.clone(),
                respect_gitignore: folder.respect_gitignore,
                include_hidden: folder.include_hidden,
                watch,
                control,
            },
        )?),
        SourceConfig::Sql(sql) => {
            let url = std::env::var(&sql.url_env).map_err(|_| {
                Error::Config(crate::config::ConfigError::Invalid(format!(
                    "source `{}`: the environment variable {} (the connection URL) is not set",
                    sql.id, sql.url_env
                )))
            })?;
            Box::new(SqlSource::new(
                sql.id.clone(),
                SqlSourceOptions {
                    url,
                    url_origin: format!("${}", sql.url_env),
                    table: sql.table.clone(),
                    query: sql.query.clone(),
                    key: sql.key.clone(),
                    text: sql.text.clone(),
                    metadata: sql.metadata.clone(),
                    cursor_column: sql.cursor_column.clone(),
                    cursor_overlap: Duration::from_secs(sql.cursor_overlap_s),
                    soft_delete_column: sql.soft_delete_column.clone(),
                    checks: Checks {
                        on_violation: match sql.checks.on_violation {
                            OnViolationConfig::Fail => OnViolation::Fail,
                            OnViolationConfig::Quarantine => OnViolation::Quarantine,
                        },
                        columns: sql.checks.columns.clone(),
                        not_null: sql.checks.not_null.clone(),
                        unique_key: sql.checks.unique_key,
                        allowed: sql.checks.allowed.clone(),
                        ranges: sql
                            .checks
                            .ranges
                            .iter()
                            .map(|(c, [min, max])| (c.clone(), (*min, *max)))
                            .collect(),
                        max_empty_text_share: sql.checks.max_empty_text_share,
                    },
                    poll_interval: Duration::from_secs(sql.poll_interval_s),
                    notify_channel: sql.notify_channel.clone(),
                },
            )?)
        }
    })
}

fn totals(sources: &[SourceStats]) -> SourceStats {
    let mut t = SourceStats {
        source_id: "*".into(),
        ..SourceStats::default()
    };
    for s in sources {
        t.absorb(s);
    }
    t.scan_complete = sources.iter().all(|s| s.scan_complete);
    t.error = None;
    t
}

/// What the gate learned from the scan.
struct GateOutcome {
    /// Hashes of every key the scan reported (16 bytes a document, not the keys).
    seen: HashSet<u128>,
    /// Keys the source reported deleted.
    deletes: Vec<DocKey>,
    end: RoundEnd,
    first_event: Option<Instant>,
    /// When the round's first change arrived (a watcher's round starts then, not when
    /// it began waiting), by the monotonic and the wall clock.
    first_change: Option<(Instant, String)>,
    scanned: u64,
    unchanged: u64,
    /// Where the scan got to (a table's change-tracking cursor).
    cursor: Option<String>,
    /// A row reported unchanged since the cursor is not current in the ledger: the
    /// cursor is dropped so the next scan reads every row.
    cursor_invalid: bool,
    /// The scan's data-quality check report.
    check: Option<CheckReport>,
}

/// The document a change is about, if any.
fn change_key(change: &Change) -> Option<&str> {
    match change {
        Change::Upsert(doc) => Some(&doc.key),
        Change::Delete(key) | Change::Unchanged(key) => Some(key),
        Change::Quarantine { key, .. } => Some(key),
        _ => None,
    }
}

/// A stable hash of a string (for spreading workers over units).
pub(crate) fn stable_hash(text: &str) -> u64 {
    key_hash(text) as u64
}

fn key_hash(key: &str) -> u128 {
    let hash = blake3::hash(key.as_bytes());
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Stage 1: takes the round's changes (up to the source's next marker), asks the ledger
/// about each reported document, skips unchanged ones without reading them, and reads,
/// extracts and chunks the rest on the blocking pool. On cancellation it stops taking
/// changes and abandons what it was preparing.
async fn gate_and_prepare(
    ctx: Arc<Ctx>,
    changes: &mut mpsc::Receiver<Change>,
    work: mpsc::Sender<Work>,
    reached_marker: &mut bool,
) -> Result<GateOutcome> {
    let mut outcome = GateOutcome {
        seen: HashSet::new(),
        deletes: Vec::new(),
        end: RoundEnd::Closed,
        first_event: None,
        first_change: None,
        scanned: 0,
        unchanged: 0,
        cursor: None,
        cursor_invalid: false,
        check: None,
    };
    let mut in_flight: JoinSet<Work> = JoinSet::new();
    let mut buffer = Vec::with_capacity(GATE_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => {
                outcome.end = RoundEnd::Cancelled;
                in_flight.shutdown().await;
                return Ok(outcome);
            }
            change = changes.recv() => match change {
                Some(change) => change,
                None => break,
            },
        };
        if outcome.first_change.is_none() {
            outcome.first_change = Some((Instant::now(), now()));
        }
        buffer.push(first);
        // Never read past this round's marker: what follows belongs to the next round.
        while buffer.len() < GATE_BATCH && !buffer.last().is_some_and(Change::ends_scan) {
            match changes.try_recv() {
                Ok(change) => buffer.push(change),
                Err(_) => break,
            }
        }
        let mut upserts = Vec::new();
        let mut unchanged = Vec::new();
        let mut quarantined = Vec::new();
        let mut end = None;
        for change in buffer.drain(..) {
            if let Some(key) = change_key(&change) {
                if !ctx.partition.is_none_or(|p| p.contains(key)) {
                    // Another unit's document: a source that cannot filter by partition
                    // sends it, and that unit indexes it.
                    continue;
                }
            }
            match change {
                Change::Upsert(doc) => upserts.push(doc),
                Change::Unchanged(key) => unchanged.push(key),
                Change::Quarantine {
                    key,
                    version,
                    reason,
                } => quarantined.push((key, version, reason)),
                Change::Cursor(cursor) => outcome.cursor = Some(cursor),
                Change::Checked(report) => outcome.check = Some(report),
                Change::Delete(key) => outcome.deletes.push(key),
                Change::ScanComplete => end = Some(RoundEnd::Full),
                Change::ScopeComplete {
                    scopes,
                    first_event,
                } => {
                    outcome.first_event = first_event;
                    end = Some(RoundEnd::Scoped(scopes));
                }
                Change::ScanAborted { reason } => end = Some(RoundEnd::Aborted(reason)),
            }
        }
        if let Some(end) = &end {
            *reached_marker = true;
            outcome.end = end.clone();
        }
        if !(upserts.is_empty() && unchanged.is_empty() && quarantined.is_empty()) {
            let keys: Vec<&str> = upserts
                .iter()
                .map(|d| d.key.as_str())
                .chain(unchanged.iter().map(String::as_str))
                .chain(quarantined.iter().map(|(k, _, _)| k.as_str()))
                .collect();
            let mut known = ctx.ledger.lookup(&ctx.source_id, &keys).await?;
            let reported = (upserts.len() + unchanged.len() + quarantined.len()) as u64;
            outcome.scanned += reported;
            LiveCounters::add(&ctx.live.scanned, reported);
            for key in unchanged {
                outcome.seen.insert(key_hash(&key));
                LiveCounters::add(&ctx.live.finished, 1);
                match known.remove(&key) {
                    Some(prior) if prior_is_current(&ctx, &prior) => outcome.unchanged += 1,
                    // Not what the ledger holds: kept (never deleted for it), and read
                    // in full by the next scan.
                    _ => outcome.cursor_invalid = true,
                }
            }
            for (key, version, reason) in quarantined {
                outcome.seen.insert(key_hash(&key));
                let prior = known.remove(&key);
                if prior.as_ref().is_some_and(|p| {
                    p.status == DocStatus::Quarantined
                        && p.version_hint == version
                        && p.fingerprint == ctx.fingerprint
                }) {
                    outcome.unchanged += 1;
                    LiveCounters::add(&ctx.live.finished, 1);
                    continue;
                }
                let (record, outcome, drop_ids) = Settled {
                    status: DocStatus::Quarantined,
                    reason: format!("quarantined: {reason}"),
                    hash: None,
                    media: None,
                    decode_warning: None,
                }
                .settle(&ctx, &key, &version, prior.as_ref());
                send(
                    &work,
                    Work::Record {
                        record,
                        outcome,
                        drop_ids,
                    },
                )
                .await?;
            }
            for doc in upserts {
                outcome.seen.insert(key_hash(&doc.key));
                let prior = known.remove(&doc.key);
                if prior.as_ref().is_some_and(|p| is_current(&ctx, p, &doc)) {
                    outcome.unchanged += 1;
                    LiveCounters::add(&ctx.live.finished, 1);
                    continue;
                }
                while in_flight.len() >= ctx.parallel_documents {
                    let done = in_flight.join_next().await.expect("set is not empty");
                    send(&work, done.map_err(|e| Error::Task(e.to_string()))?).await?;
                }
                let ctx = ctx.clone();
                in_flight.spawn_blocking(move || prepare(&ctx, doc, prior));
            }
        }
        if end.is_some() {
            break;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        send(&work, done.map_err(|e| Error::Task(e.to_string()))?).await?;
    }
    Ok(outcome)
}

/// Whether the ledger row already describes this version under these settings, so the
/// document need not even be read.
fn is_current(ctx: &Ctx, prior: &DocRecord, doc: &RawDoc) -> bool {
    // A quarantined row that now passes the checks must be indexed, whatever its version.
    prior_is_current(ctx, prior)
        && prior.status != DocStatus::Quarantined
        && prior.version_hint == doc.version
}

/// Whether a ledger row is settled under the current settings (whatever its version).
fn prior_is_current(ctx: &Ctx, prior: &DocRecord) -> bool {
    prior.status != DocStatus::Pending
        && !(ctx.retry_failed && prior.status == DocStatus::Failed)
        && !prior.version_hint.is_empty()
        && prior.fingerprint == ctx.fingerprint
        && (prior.point_ids.is_empty() || prior.collection == ctx.collection)
}

async fn send<T>(tx: &mpsc::Sender<T>, item: T) -> Result<()> {
    tx.send(item)
        .await
        .map_err(|_| Error::Task("a later pipeline stage stopped".into()))
}

/// How a document that ends without new points (failed or skipped) is settled: its row,
/// and the points to delete with it.
struct Settled {
    status: DocStatus,
    reason: String,
    hash: Option<String>,
    media: Option<MediaType>,
    decode_warning: Option<String>,
}

impl Settled {
    fn settle(
        self,
        ctx: &Ctx,
        key: &str,
        version: &str,
        prior: Option<&DocRecord>,
    ) -> (DocRecord, Outcome, Vec<PointId>) {
        // A document that fails keeps serving the points its row vouches for, until it is
        // fixed; one that is skipped (now empty, unsupported) has nothing to serve. Points
        // an interrupted write may have left are never vouched for: they go.
        let keep: Vec<PointId> = match (self.status, prior) {
            (DocStatus::Failed | DocStatus::Quarantined, Some(p))
                if p.status != DocStatus::Pending && p.collection == ctx.collection =>
            {
                p.point_ids.clone()
            }
            _ => Vec::new(),
        };
        let drop_ids: Vec<PointId> = ctx
            .maybe_present(prior)
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        let outcome = match self.status {
            DocStatus::Failed => Outcome::Failed,
            DocStatus::Quarantined => Outcome::Quarantined,
            _ => Outcome::Skipped,
        };
        let record = DocRecord {
            source_id: ctx.source_id.clone(),
            doc_key: key.to_string(),
            version_hint: version.to_string(),
            content_hash: self.hash,
            fingerprint: ctx.fingerprint.clone(),
            status: self.status,
            reason: Some(self.reason),
            media_type: self.media.map(|m| media_name(m).to_string()),
            collection: ctx.collection.clone(),
            chunk_hashes: if keep.is_empty() {
                Vec::new()
            } else {
                prior.map(|p| p.chunk_hashes.clone()).unwrap_or_default()
            },
            point_ids: keep,
            pending_point_ids: None,
            decode_warning: self.decode_warning,
            first_indexed_at: prior.and_then(|p| p.first_indexed_at.clone()),
            updated_at: now(),
        };
        (record, outcome, drop_ids)
    }
}

/// Reads, hashes, extracts and chunks one document (blocking).
fn prepare(ctx: &Ctx, doc: RawDoc, prior: Option<DocRecord>) -> Work {
    let record = |status: DocStatus,
                  reason: String,
                  hash: Option<String>,
                  media: Option<MediaType>|
     -> Work {
        let (record, outcome, drop_ids) = Settled {
            status,
            reason,
            hash,
            media,
            decode_warning: None,
        }
        .settle(ctx, &doc.key, &doc.version, prior.as_ref());
        Work::Record {
            record,
            outcome,
            drop_ids,
        }
    };
    let media = match &doc.media {
        Some(name) => MediaType::from_name(name),
        None => MediaType::from_key(&doc.key),
    };
    let Some(media) = media else {
        let ext = doc.key.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        let reason = if ext.is_empty() {
            "unsupported file type (no extension); add it to `exclude` to silence this".to_string()
        } else {
            format!("unsupported file type (.{ext}); add it to `exclude` to silence this")
        };
        return record(DocStatus::Skipped, reason, None, None);
    };
    let bytes = match doc.content.read(ctx.max_document_bytes) {
        Ok(bytes) => bytes,
        // Gone since it was listed (a watcher sees this all the time): not a failure.
        // Its points go; the deletion's own event or the next scan removes the row.
        Err(err @ ReadError::Vanished) => {
            tracing::debug!(source = %ctx.source_id, key = %doc.key, "vanished before it was read");
            return record(DocStatus::Skipped, err.to_string(), None, Some(media));
        }
        Err(err) => return record(DocStatus::Failed, err.to_string(), None, Some(media)),
    };
    // A row's payload fields are part of what it is: a changed tenant column must reach
    // the payload even when the text is the same (its vectors are then reused).
    let hash = if doc.metadata.is_empty() {
        content_hash(&bytes)
    } else {
        let mut all = bytes.clone();
        all.push(0x1f);
        all.extend(
            serde_json::Value::Object(doc.metadata.clone())
                .to_string()
                .as_bytes(),
        );
        content_hash(&all)
    };
    if let Some(p) = &prior {
        if p.status == DocStatus::Indexed
            && p.content_hash.as_deref() == Some(hash.as_str())
            && p.fingerprint == ctx.fingerprint
            && p.collection == ctx.collection
        {
            let mut same = p.clone();
            same.version_hint = doc.version.clone();
            same.updated_at = now();
            return Work::Record {
                record: same,
                outcome: Outcome::ContentUnchanged,
                drop_ids: Vec::new(),
            };
        }
    }
    // Parsers of untrusted bytes can panic; one bad document must not end the run.
    let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        extract(&bytes, media).map(|extracted| {
            let chunks = ctx.chunker.chunk(&extracted, media);
            (extracted, chunks)
        })
    }));
    drop(bytes);
    match parsed {
        Ok(Ok((extracted, chunks))) => {
            if chunks.is_empty() {
                return record(
                    DocStatus::Skipped,
                    "no text to index after cleaning".into(),
                    Some(hash),
                    Some(media),
                );
            }
            Work::Index(PreparedDoc {
                key: doc.key,
                version: doc.version,
                hash,
                media,
                title: extracted.title,
                decode_warning: extracted.decode_warning,
                chunks,
                prior,
                metadata: doc.metadata,
            })
        }
        Ok(Err(ExtractError::Skip(reason))) => {
            record(DocStatus::Skipped, reason, Some(hash), Some(media))
        }
        Ok(Err(ExtractError::Invalid(reason))) => {
            record(DocStatus::Failed, reason, Some(hash), Some(media))
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            record(
                DocStatus::Failed,
                format!(
                    "the {} parser crashed on this document ({what}); please report it with the file",
                    media_name(media)
                ),
                Some(hash),
                Some(media),
            )
        }
    }
}

fn media_name(media: MediaType) -> &'static str {
    match media {
        MediaType::Markdown => "markdown",
        MediaType::PlainText => "text",
        MediaType::Code => "code",
        MediaType::Html => "html",
        MediaType::Pdf => "pdf",
    }
}

/// Stage 2: groups prepared documents into batches of about `commit_batch_chunks` chunks,
/// reuses vectors of chunks the index already holds, and embeds the rest on the blocking
/// pool while stage 1 prepares the next batch.
async fn embed_batches(
    ctx: Arc<Ctx>,
    mut work: mpsc::Receiver<Work>,
    batches: mpsc::Sender<EmbeddedBatch>,
) -> Result<()> {
    while let Some(first) = work.recv().await {
        let mut docs = Vec::new();
        let mut records = Vec::new();
        let mut chunk_count = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Work::Index(doc) => {
                    chunk_count += doc.chunks.len();
                    docs.push(doc);
                }
                Work::Record {
                    record,
                    outcome,
                    drop_ids,
                } => records.push((record, outcome, drop_ids)),
            }
            if chunk_count < ctx.commit_batch_chunks && records.len() < GATE_BATCH {
                next = work.try_recv().ok();
            }
        }
        if ctx.cancel.is_cancelled() {
            // Shutting down: this batch is abandoned before anything is written for it.
            continue;
        }
        let started = Instant::now();
        let known = reusable_vectors(&ctx, &docs).await?;
        let mut to_embed = HashMap::new();
        let mut reused = 0;
        for doc in &docs {
            let new = doc
                .chunks
                .iter()
                .filter(|c| !known.contains_key(&c.hash))
                .count();
            reused += (doc.chunks.len() - new) as u64;
            to_embed.insert(doc.key.clone(), new);
        }
        let embedded = if ctx.dry_run {
            docs.into_iter().map(|doc| (doc, Vec::new())).collect()
        } else {
            embed_docs(&ctx, docs, &known, &mut records).await?
        };
        send(
            &batches,
            EmbeddedBatch {
                embed_ms: started.elapsed().as_millis() as u64,
                reused,
                docs: embedded,
                records,
                to_embed,
            },
        )
        .await?;
    }
    Ok(())
}

/// Vectors of chunks (by chunk hash) that some point in the index already has: the same
/// text embedded by the same model, whichever document it came from. This makes edits
/// re-embed only changed chunks and renames re-embed nothing.
async fn reusable_vectors(ctx: &Ctx, docs: &[PreparedDoc]) -> Result<HashMap<String, Vec<f32>>> {
    let mut wanted: Vec<String> = docs
        .iter()
        .flat_map(|d| d.chunks.iter().map(|c| c.hash.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    wanted.sort();
    let mut found = HashMap::new();
    for hashes in wanted.chunks(REUSE_LOOKUP) {
        let filter = Filter::default().any_of("chunk_hash", hashes.to_vec());
        let mut offset = None;
        loop {
            let (points, next) = ctx
                .store
                .scroll(offset, REUSE_LOOKUP, Some(filter.clone()), true)
                .await?;
            for point in points {
                let hash = point.payload.get("chunk_hash").and_then(|h| h.as_str());
                if let (Some(hash), Some(vector)) = (hash, point.vector) {
                    if vector.len() == ctx.embedder.dim() {
                        found.insert(hash.to_string(), vector);
                    }
                }
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
    }
    Ok(found)
}

/// Embeds the chunks of `docs` that `known` lacks, in one call; if that fails, document
/// by document, so a document the model cannot take fails alone.
async fn embed_docs(
    ctx: &Arc<Ctx>,
    docs: Vec<PreparedDoc>,
    known: &HashMap<String, Vec<f32>>,
    records: &mut Vec<(DocRecord, Outcome, Vec<PointId>)>,
) -> Result<Vec<(PreparedDoc, Vec<Vec<f32>>)>> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = docs
        .iter()
        .flat_map(|d| d.chunks.iter())
        .filter(|c| !known.contains_key(&c.hash))
        .map(|c| c.embed_text.clone())
        .collect();
    let embedder = ctx.embedder.clone();
    let result = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        embedder.embed(&refs)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?;
    let fresh = match result {
        Ok(vectors) => vectors,
        Err(err) if docs.len() == 1 => {
            let doc = docs.into_iter().next().expect("one doc");
            tracing::warn!(source = %ctx.source_id, key = %doc.key, error = %err, "embedding failed");
            records.push(failed_embedding(ctx, &doc, &err.to_string()));
            return Ok(Vec::new());
        }
        Err(err) => {
            tracing::warn!(source = %ctx.source_id, error = %err, "batch embedding failed; retrying document by document");
            let mut out = Vec::new();
            for doc in docs {
                out.extend(Box::pin(embed_docs(ctx, vec![doc], known, records)).await?);
            }
            return Ok(out);
        }
    };
    LiveCounters::add(&ctx.live.chunks_embedded, fresh.len() as u64);
    let mut fresh = fresh.into_iter();
    Ok(docs
        .into_iter()
        .map(|doc| {
            let vectors: Vec<Vec<f32>> = doc
                .chunks
                .iter()
                .map(|c| match known.get(&c.hash) {
                    Some(v) => v.clone(),
                    None => fresh.next().expect("one fresh vector per unknown chunk"),
                })
                .collect();
            (doc, vectors)
        })
        .collect())
}

fn failed_embedding(
    ctx: &Ctx,
    doc: &PreparedDoc,
    reason: &str,
) -> (DocRecord, Outcome, Vec<PointId>) {
    Settled {
        status: DocStatus::Failed,
        reason: format!("the embedding model rejected this document: {reason}"),
        hash: Some(doc.hash.clone()),
        media: Some(doc.media),
        decode_warning: doc.decode_warning.clone(),
    }
    .settle(ctx, &doc.key, &doc.version, doc.prior.as_ref())
}

/// The intent row written before a document's points change: every point that may exist
/// once the write is done or dies half-way.
fn intent(ctx: &Ctx, key: &str, prior: Option<&DocRecord>, writing: Vec<PointId>) -> DocRecord {
    DocRecord {
        source_id: ctx.source_id.clone(),
        doc_key: key.to_string(),
        version_hint: prior.map(|p| p.version_hint.clone()).unwrap_or_default(),
        content_hash: prior.and_then(|p| p.content_hash.clone()),
        fingerprint: prior.map(|p| p.fingerprint.clone()).unwrap_or_default(),
        status: DocStatus::Pending,
        reason: None,
        media_type: prior.and_then(|p| p.media_type.clone()),
        collection: ctx.collection.clone(),
        point_ids: ctx.maybe_present(prior),
        pending_point_ids: Some(writing),
        chunk_hashes: Vec::new(),
        decode_warning: None,
        first_indexed_at: prior.and_then(|p| p.first_indexed_at.clone()),
        updated_at: now(),
    }
}

/// Stage 3: for each batch, the ledger protocol: intent, upsert, delete stale, commit.
async fn commit_batches(
    ctx: Arc<Ctx>,
    mut batches: mpsc::Receiver<EmbeddedBatch>,
) -> Result<(SourceStats, Vec<FailureNote>, Vec<PlannedChange>)> {
    let mut stats = SourceStats::default();
    let mut failures = Vec::new();
    let mut planned = Vec::new();
    while let Some(batch) = batches.recv().await {
        stats.embed_ms += batch.embed_ms;
        stats.chunks_reused += batch.reused;
        let indexed_at = now();
        let mut intents = Vec::new();
        let mut points = Vec::new();
        let mut stale = Vec::new();
        let mut finals = Vec::new();
        for (doc, vectors) in batch.docs {
            let ids: Vec<PointId> = doc
                .chunks
                .iter()
                .map(|c| point_id(&ctx.source_id, &doc.key, c.index))
                .collect();
            let was_indexed = doc
                .prior
                .as_ref()
                .is_some_and(|p| !p.point_ids.is_empty() || p.status == DocStatus::Indexed);
            let to_embed = batch.to_embed.get(&doc.key).copied().unwrap_or(0);
            if was_indexed {
                stats.updated += 1;
            } else {
                stats.added += 1;
            }
            stats.chunks_embedded += to_embed as u64;
            if ctx.dry_run {
                planned.push(PlannedChange {
                    source_id: ctx.source_id.clone(),
                    doc_key: doc.key.clone(),
                    action: if was_indexed { "update" } else { "add" },
                    chunks: doc.chunks.len(),
                    chunks_to_embed: to_embed,
                });
                continue;
            }
            let intent = intent(&ctx, &doc.key, doc.prior.as_ref(), ids.clone());
            let keep: HashSet<&PointId> = ids.iter().collect();
            stale.extend(
                intent
                    .point_ids
                    .iter()
                    .filter(|id| !keep.contains(id))
                    .copied(),
            );
            intents.push(intent);
            for ((chunk, vector), id) in doc.chunks.iter().zip(vectors).zip(&ids) {
                points.push(Point {
                    id: *id,
                    vector,
                    payload: payload(&ctx, &doc, chunk, &indexed_at),
                });
            }
            finals.push(DocRecord {
                source_id: ctx.source_id.clone(),
                doc_key: doc.key.clone(),
                version_hint: doc.version.clone(),
                content_hash: Some(doc.hash.clone()),
                fingerprint: ctx.fingerprint.clone(),
                status: DocStatus::Indexed,
                reason: None,
                media_type: Some(media_name(doc.media).to_string()),
                collection: ctx.collection.clone(),
                chunk_hashes: doc.chunks.iter().map(|c| c.hash.clone()).collect(),
                point_ids: ids,
                pending_point_ids: None,
                decode_warning: doc.decode_warning.clone(),
                first_indexed_at: Some(
                    doc.prior
                        .as_ref()
                        .and_then(|p| p.first_indexed_at.clone())
                        .unwrap_or_else(|| indexed_at.clone()),
                ),
                updated_at: indexed_at.clone(),
            });
        }
        for (record, outcome, drop_ids) in batch.records {
            let action = match outcome {
                Outcome::ContentUnchanged => {
                    stats.content_unchanged += 1;
                    "touch"
                }
                Outcome::Skipped => {
                    stats.skipped += 1;
                    "skip"
                }
                Outcome::Quarantined => {
                    stats.quarantined += 1;
                    failures.push(FailureNote {
                        source_id: record.source_id.clone(),
                        doc_key: record.doc_key.clone(),
                        reason: record.reason.clone().unwrap_or_default(),
                    });
                    "quarantine"
                }
                Outcome::Failed => {
                    stats.failed += 1;
                    failures.push(FailureNote {
                        source_id: record.source_id.clone(),
                        doc_key: record.doc_key.clone(),
                        reason: record.reason.clone().unwrap_or_default(),
                    });
                    if !ctx.dry_run {
                        tracing::warn!(source = %record.source_id, key = %record.doc_key, reason = record.reason.as_deref().unwrap_or(""), "document failed");
                    }
                    "fail"
                }
            };
            if ctx.dry_run {
                planned.push(PlannedChange {
                    source_id: ctx.source_id.clone(),
                    doc_key: record.doc_key.clone(),
                    action,
                    chunks: 0,
                    chunks_to_embed: 0,
                });
                continue;
            }
            if !drop_ids.is_empty() {
                let mut pending = record.clone();
                pending.status = DocStatus::Pending;
                pending.point_ids = record.point_ids.iter().chain(&drop_ids).copied().collect();
                pending.pending_point_ids = Some(record.point_ids.clone());
                intents.push(pending);
                stale.extend(drop_ids);
            }
            finals.push(record);
        }
        if ctx.dry_run {
            continue;
        }
        let committed = finals.len() as u64;
        let (upserted, deleted) = (points.len() as u64, stale.len() as u64);
        let started = Instant::now();
        commit_protocol(&ctx, intents, points, stale, finals).await?;
        stats.commit_ms += started.elapsed().as_millis() as u64;
        stats.points_upserted += upserted;
        stats.points_deleted += deleted;
        LiveCounters::add(&ctx.live.finished, committed);
        tracing::debug!(source = %ctx.source_id, docs = committed, points = upserted, stale = deleted, "batch committed");
    }
    Ok((stats, failures, planned))
}

/// Intent, upsert, delete, commit: the order that keeps the ledger from ever vouching
/// for points the store lacks.
async fn commit_protocol(
    ctx: &Ctx,
    intents: Vec<DocRecord>,
    points: Vec<Point>,
    stale: Vec<PointId>,
    finals: Vec<DocRecord>,
) -> Result<()> {
    let ledger = &ctx.ledger;
    let store = &ctx.store;
    let fence = ctx.fence();
    if !intents.is_empty() {
        retry("ledger intent", || async {
            ledger
                .commit_fenced(&intents, fence)
                .await
                .map_err(Error::from)
        })
        .await?;
    }
    ctx.check_fault(CommitStep::AfterIntent)?;
    let wrote = !points.is_empty() || !stale.is_empty();
    if !points.is_empty() {
        ctx.check_lease().await?;
        retry("store upsert", || async {
            store.upsert(points.clone()).await.map_err(Error::from)
        })
        .await?;
    }
    ctx.check_fault(CommitStep::AfterUpsert)?;
    if !stale.is_empty() {
        ctx.check_lease().await?;
        retry("store delete", || async {
            store.delete(stale.clone()).await.map_err(Error::from)
        })
        .await?;
    }
    ctx.check_fault(CommitStep::AfterStaleDelete)?;
    let committed = retry("ledger commit", || async {
        ledger
            .commit_fenced(&finals, fence)
            .await
            .map_err(Error::from)
    })
    .await;
    if let Err(Error::Ledger(LedgerError::LeaseLost { .. })) = &committed {
        if wrote {
            note_lost_writes(ctx, finals.iter().map(|r| r.doc_key.clone()).collect()).await;
        }
    }
    committed?;
    ctx.check_fault(CommitStep::AfterCommit)
}

/// This worker wrote these documents' points after losing their unit (it learnt so when
/// the fenced commit failed): another worker may have indexed them meanwhile, so they are
/// noted for the unit's holder to index again.
async fn note_lost_writes(ctx: &Ctx, keys: Vec<String>) {
    tracing::warn!(unit = %ctx.unit, documents = keys.len(), "lost the unit during a write; its holder re-indexes these documents");
    if let Err(err) = ctx.ledger.note_repairs(&ctx.source_id, &keys).await {
        tracing::error!(unit = %ctx.unit, error = %err, "could not note the documents written after the unit was lost; `freshet verify --repair` finds them");
    }
}

fn payload(ctx: &Ctx, doc: &PreparedDoc, chunk: &Chunk, indexed_at: &str) -> Payload {
    let serde_json::Value::Object(map) = serde_json::json!({
        "source_id": ctx.source_id,
        "doc_key": doc.key,
        "chunk_index": chunk.index,
        "text": chunk.text,
        "byte_start": chunk.byte_start,
        "byte_end": chunk.byte_end,
        "page": chunk.page,
        "page_end": chunk.page_end,
        "heading_path": chunk.heading_path,
        "title": doc.title,
        "media_type": media_name(doc.media),
        "content_hash": doc.hash,
        "chunk_hash": chunk.hash,
        "fingerprint": ctx.fingerprint,
        "decode_warning": doc.decode_warning,
        "indexed_at": indexed_at,
    }) else {
        unreachable!("json! object literal")
    };
    let mut map = map;
    for (field, value) in &doc.metadata {
        // freshet's own fields win; config validation keeps names from clashing.
        map.entry(field.clone()).or_insert_with(|| value.clone());
    }
    for value in map.values_mut() {
        strip_nul(value);
    }
    map
}

/// Removes NUL characters from every string of a payload value: PostgreSQL's `jsonb`
/// refuses them, and no store kind should hold what another refuses. (Chunk text is
/// cleaned before this; titles and a source's metadata columns may still carry them.)
fn strip_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => s.retain(|c| c != '\0'),
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nul),
        serde_json::Value::Object(map) => map.values_mut().for_each(strip_nul),
        _ => {}
    }
}

/// Runs a store or ledger step, retrying transient errors with capped exponential backoff.
/// Permanent errors and exhausted retries stop the run: nothing is marked done.
async fn retry<F, Fut>(what: &str, step: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let backoff = crate::retry::Backoff {
        attempts: MAX_ATTEMPTS,
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
    };
    crate::retry::with_backoff(what, backoff, step).await
}

/// After a scan: documents in the ledger that the scan covered (`scope`: `Some(None)` for
/// everything, `Some(Some(scopes))` for a partial scan, `None` for nothing) but did not
/// report are gone from the source, and so are the ones it reported deleted. Their
/// points and rows are removed, behind the mass-deletion guard.
async fn sweep(
    ctx: &Ctx,
    scope: Option<Option<&[DocKey]>>,
    seen: &HashSet<u128>,
    deletes: &[DocKey],
    options: &SyncOptions,
    stats: &mut SourceStats,
    planned: &mut Vec<PlannedChange>,
) -> Result<()> {
    let mut gone: Vec<String> = deletes.to_vec();
    let ranges: Vec<&str> = match scope {
        None => Vec::new(),
        Some(None) => vec![""],
        Some(Some(scopes)) => scopes.iter().map(String::as_str).collect(),
    };
    for range in ranges {
        let mut after: Option<String> = None;
        loop {
            let page = ctx
                .ledger
                .keys_page_in(
                    &ctx.source_id,
                    range,
                    ctx.partition,
                    after.as_deref(),
                    SWEEP_PAGE,
                )
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            gone.extend(
                page.into_iter()
                    .filter(|k| in_scope(range, k) && !seen.contains(&key_hash(k))),
            );
            after = Some(last);
        }
    }
    gone.sort();
    gone.dedup();
    if gone.is_empty() {
        return Ok(());
    }
    let total = ctx
        .ledger
        .document_count(&ctx.source_id, ctx.partition)
        .await? as usize;
    let share = gone.len() as f64 / total.max(1) as f64;
    if share > ctx.max_delete_share && !options.allow_mass_delete {
        return Err(Error::MassDelete {
            source_id: ctx.source_id.clone(),
            would_delete: gone.len(),
            total,
            share: share * 100.0,
            limit: ctx.max_delete_share * 100.0,
        });
    }
    for keys in gone.chunks(GATE_BATCH) {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let records = ctx.ledger.lookup(&ctx.source_id, &refs).await?;
        let mut intents = Vec::new();
        let mut ids = Vec::new();
        for record in records.values() {
            let intent = intent(ctx, &record.doc_key, Some(record), Vec::new());
            ids.extend(intent.point_ids.iter().copied());
            intents.push(intent);
            if ctx.dry_run {
                planned.push(PlannedChange {
                    source_id: ctx.source_id.clone(),
                    doc_key: record.doc_key.clone(),
                    action: "delete",
                    chunks: record.point_ids.len(),
                    chunks_to_embed: 0,
                });
            }
        }
        stats.deleted += records.len() as u64;
        stats.points_deleted += ids.len() as u64;
        if ctx.dry_run {
            continue;
        }
        let ledger = &ctx.ledger;
        let store = &ctx.store;
        let fence = ctx.fence();
        retry("ledger intent", || async {
            ledger
                .commit_fenced(&intents, fence)
                .await
                .map_err(Error::from)
        })
        .await?;
        ctx.check_fault(CommitStep::AfterIntent)?;
        ctx.check_lease().await?;
        retry("store delete", || async {
            store.delete(ids.clone()).await.map_err(Error::from)
        })
        .await?;
        ctx.check_fault(CommitStep::AfterStaleDelete)?;
        retry("ledger remove", || async {
            ledger
                .remove_fenced(&ctx.source_id, keys, fence)
                .await
                .map_err(Error::from)
        })
        .await?;
        ctx.check_fault(CommitStep::AfterCommit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_and_distinct() {
        let a = point_id("docs", "a.md", 0);
        // Pinned: ids must not change between releases, or every index re-uploads and
        // old points become orphans.
        assert_eq!(a.to_string(), "16ccd63d-9176-53d8-a47e-c8bbd26d624a");
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, point_id("docs", "a.md", 1));
        assert_ne!(a, point_id("docs", "b.md", 0));
        assert_ne!(a, point_id("other", "a.md", 0));
        // The separator keeps (source, key) pairs from colliding by concatenation.
        assert_ne!(point_id("a", "bc", 0), point_id("ab", "c", 0));
    }

    #[test]
    fn payload_strings_lose_nul_characters_at_any_depth() {
        let mut value = serde_json::json!({"title": "a\u{0}b", "meta": {"tags": ["x\u{0}", 3]}});
        strip_nul(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"title": "ab", "meta": {"tags": ["x", 3]}})
        );
    }

    #[test]
    fn key_hashes_differ_for_different_keys() {
        assert_eq!(key_hash("a/b.md"), key_hash("a/b.md"));
        assert_ne!(key_hash("a/b.md"), key_hash("a/b.mD"));
    }
}
