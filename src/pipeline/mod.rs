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
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet_connectors::{
    Change, Checks, DocKey, FolderSource, FolderSourceOptions, OnViolation, Source, SourceContext,
    SqlSource, SqlSourceOptions, WatchControl, WatchSettings,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chunk::{Chunk, Chunker};
use crate::config::{OnViolationConfig, SourceConfig};
use crate::embed::Embedder;
use crate::extract::{ExtractOptions, MediaType};
use crate::index::Index;
use crate::ledger::{now, now_ms, DocRecord, Lease, Leases, Ledger, LedgerError};
use crate::sparse::Bm25Encoder;
use crate::store::{PointId, VectorStore};
use crate::telemetry::LiveCounters;
use crate::units::Unit;
use crate::{Error, Result};
use freshet_connectors::Partition;

mod commit;
mod embed;
mod gate;
mod prepare;
mod sweep;
mod sync;

use commit::commit_batches;
use embed::embed_batches;
use gate::gate_and_prepare;
pub(crate) use gate::stable_hash;
use sweep::sweep;

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
// Boxing the common case (`Index`) to shrink the rare one would cost an allocation per
// document for no gain: at most `PREPARED_QUEUE` of these are alive at once.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// New or changed content: embed these chunks and replace the document's points.
    Index(PreparedDoc),
    /// Write this ledger row, after deleting `drop_ids` from the store.
    Record {
        record: DocRecord,
        outcome: Outcome,
        drop_ids: Vec<PointId>,
    },
    /// A document (first) and the documents carried inside it (an email's attachments),
    /// with the rows of attachments it no longer carries. A family reaches the store and
    /// the ledger in one batch, and its parent's intent row covers it: a crash anywhere
    /// leaves the parent `pending`, and redoing the parent redoes the family.
    Family {
        members: Vec<Work>,
        removed: Vec<DocRecord>,
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
    /// The key of the document this one was carried in (an attachment's message).
    parent: Option<String>,
}

/// A batch ready for the store: prepared documents with one vector per chunk.
struct EmbeddedBatch {
    embed_ms: u64,
    reused: u64,
    docs: Vec<(PreparedDoc, Vec<Vec<f32>>)>,
    records: Vec<(DocRecord, Outcome, Vec<PointId>)>,
    /// Rows of attachments their message no longer carries: removed with their points.
    removed: Vec<DocRecord>,
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
    /// The fingerprint of a row of no known type, and of each type's documents (see
    /// [`Index::fingerprint_of`]).
    fingerprint: String,
    fingerprints: HashMap<MediaType, String>,
    collection: String,
    ledger: Ledger,
    embedder: Arc<dyn Embedder>,
    /// BM25 term weights beside the vectors, where the collection keeps them.
    sparse: Option<Arc<Bm25Encoder>>,
    chunker: Arc<Chunker>,
    extract: ExtractOptions,
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
    /// The fingerprint a document of this type is indexed under (unknown types: the base).
    fn fingerprint_for(&self, media: Option<MediaType>) -> &str {
        media
            .and_then(|m| self.fingerprints.get(&m))
            .unwrap_or(&self.fingerprint)
    }

    /// Whether a ledger row was written under the current settings for its type.
    fn is_current_fingerprint(&self, prior: &DocRecord) -> bool {
        let media = prior.media_type.as_deref().and_then(MediaType::from_name);
        prior.fingerprint == self.fingerprint_for(media)
    }

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

impl Index {
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
        let fingerprint = self.fingerprint();
        let fingerprints: HashMap<MediaType, String> = MediaType::ALL
            .iter()
            .map(|m| (*m, self.fingerprint_of(*m)))
            .collect();
        let current = self.current_fingerprints();
        let ctx = Arc::new(Ctx {
            source_id: source.id().to_string(),
            unit: unit.id.clone(),
            partition: unit.partition,
            lease,
            leases: self.leases.clone(),
            fingerprint,
            fingerprints,
            collection: self.info.collection.clone(),
            ledger: self.ledger.clone(),
            embedder: self.embedder.clone(),
            sparse: self.sparse.clone(),
            chunker: self.chunker.clone(),
            extract: self.extract.clone(),
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
                        .cursor(&unit.id, source.id(), unit.partition, &current)
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
}
