//! Stage 1, the gate: takes a round's changes up to the source's next marker and lets
//! through only documents the ledger does not already describe under the current
//! settings — an unchanged document is never read, and nothing past the marker is taken.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use freshet_connectors::{Change, CheckReport, DocKey, RawDoc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::prepare::{prepare, settle_pending_children, Settled};
use super::{Ctx, RoundEnd, Work, GATE_BATCH};
use crate::ledger::{now, DocRecord, DocStatus};
use crate::telemetry::LiveCounters;
use crate::{Error, Result};

/// What the gate learned from the scan.
pub(super) struct GateOutcome {
    /// Hashes of every key the scan reported (16 bytes a document, not the keys).
    pub(super) seen: HashSet<u128>,
    /// Keys the source reported deleted.
    pub(super) deletes: Vec<DocKey>,
    pub(super) end: RoundEnd,
    pub(super) first_event: Option<Instant>,
    /// When the round's first change arrived (a watcher's round starts then, not when
    /// it began waiting), by the monotonic and the wall clock.
    pub(super) first_change: Option<(Instant, String)>,
    pub(super) scanned: u64,
    pub(super) unchanged: u64,
    /// Where the scan got to (a table's change-tracking cursor).
    pub(super) cursor: Option<String>,
    /// A row reported unchanged since the cursor is not current in the ledger: the
    /// cursor is dropped so the next scan reads every row.
    pub(super) cursor_invalid: bool,
    /// The scan's data-quality check report.
    pub(super) check: Option<CheckReport>,
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

pub(super) fn key_hash(key: &str) -> u128 {
    let hash = blake3::hash(key.as_bytes());
    u128::from_le_bytes(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Stage 1: takes the round's changes (up to the source's next marker), asks the ledger
/// about each reported document, skips unchanged ones without reading them, and reads,
/// extracts and chunks the rest on the blocking pool. On cancellation it stops taking
/// changes and abandons what it was preparing.
pub(super) async fn gate_and_prepare(
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
            // Documents that will be read again, or set aside, bring the rows of the
            // attachments they carried, to rewrite, remove or settle them (retrying
            // failures: to see which failed).
            let rereads: Vec<&str> = upserts
                .iter()
                .filter(|doc| {
                    known
                        .get(&doc.key)
                        .is_some_and(|p| ctx.retry_failed || !is_current(&ctx, p, doc))
                })
                .map(|doc| doc.key.as_str())
                .chain(
                    quarantined
                        .iter()
                        .filter(|(key, _, _)| known.contains_key(key))
                        .map(|(key, _, _)| key.as_str()),
                )
                .collect();
            let mut children = if rereads.is_empty() {
                HashMap::new()
            } else {
                ctx.ledger.children(&ctx.source_id, &rereads).await?
            };
            for (key, version, reason) in quarantined {
                outcome.seen.insert(key_hash(&key));
                let prior = known.remove(&key);
                if prior.as_ref().is_some_and(|p| {
                    p.status == DocStatus::Quarantined
                        && p.version_hint == version
                        && ctx.is_current_fingerprint(p)
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
                    parent_key: None,
                }
                .settle(&ctx, &key, &version, prior.as_ref());
                let set_aside = Work::Record {
                    record,
                    outcome,
                    drop_ids,
                };
                let children = children.remove(&key).unwrap_or_default();
                let why = format!("its message was quarantined: {reason}");
                send(
                    &work,
                    settle_pending_children(&ctx, &key, &version, set_aside, children, &why),
                )
                .await?;
            }
            for doc in upserts {
                outcome.seen.insert(key_hash(&doc.key));
                let prior = known.remove(&doc.key);
                let children = children.remove(&doc.key).unwrap_or_default();
                let retry_child =
                    ctx.retry_failed && children.iter().any(|c| c.status == DocStatus::Failed);
                if prior.as_ref().is_some_and(|p| is_current(&ctx, p, &doc)) && !retry_child {
                    outcome.unchanged += 1;
                    LiveCounters::add(&ctx.live.finished, 1);
                    continue;
                }
                while in_flight.len() >= ctx.parallel_documents {
                    let done = in_flight.join_next().await.expect("set is not empty");
                    send(&work, done.map_err(|e| Error::Task(e.to_string()))?).await?;
                }
                let ctx = ctx.clone();
                in_flight.spawn_blocking(move || prepare(&ctx, doc, prior, children));
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
        && ctx.is_current_fingerprint(prior)
        && (prior.point_ids.is_empty() || prior.collection == ctx.collection)
}

pub(super) async fn send<T>(tx: &mpsc::Sender<T>, item: T) -> Result<()> {
    tx.send(item)
        .await
        .map_err(|_| Error::Task("a later pipeline stage stopped".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_differ_for_different_keys() {
        assert_eq!(key_hash("a/b.md"), key_hash("a/b.md"));
        assert_ne!(key_hash("a/b.md"), key_hash("a/b.mD"));
    }
}
