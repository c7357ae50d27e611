//! Stage 3, the ledger protocol: intent, upsert, delete stale, commit — the ledger never
//! vouches for points the store lacks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    point_id, CommitStep, Ctx, EmbeddedBatch, FailureNote, Outcome, PlannedChange, PreparedDoc,
    SourceStats, MAX_ATTEMPTS,
};
use crate::chunk::Chunk;
use crate::ledger::{now, DocRecord, DocStatus, LedgerError};
use crate::store::{Payload, Point, PointId};
use crate::telemetry::LiveCounters;
use crate::{Error, Result};

/// The intent row written before a document's points change: every point that may exist
/// once the write is done or dies half-way. `parent`: the key of the document it is
/// carried in.
pub(super) fn intent(
    ctx: &Ctx,
    key: &str,
    parent: Option<&str>,
    prior: Option<&DocRecord>,
    writing: Vec<PointId>,
) -> DocRecord {
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
        parent_key: parent.map(str::to_string),
    }
}

/// Stage 3: for each batch, the ledger protocol: intent, upsert, delete stale, commit.
pub(super) async fn commit_batches(
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
            let intent = intent(
                &ctx,
                &doc.key,
                doc.parent.as_deref(),
                doc.prior.as_ref(),
                ids.clone(),
            );
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
                    sparse: ctx
                        .sparse
                        .as_ref()
                        .map(|bm25| bm25.document(&chunk.embed_text)),
                    payload: payload(&ctx, &doc, chunk, &indexed_at),
                });
            }
            finals.push(DocRecord {
                source_id: ctx.source_id.clone(),
                doc_key: doc.key.clone(),
                version_hint: doc.version.clone(),
                content_hash: Some(doc.hash.clone()),
                fingerprint: ctx.fingerprint_for(Some(doc.media)).to_string(),
                status: DocStatus::Indexed,
                reason: None,
                media_type: Some(doc.media.name().to_string()),
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
                parent_key: doc.parent.clone(),
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
        let mut removed = Vec::new();
        for record in batch.removed {
            stats.deleted += 1;
            if ctx.dry_run {
                planned.push(PlannedChange {
                    source_id: ctx.source_id.clone(),
                    doc_key: record.doc_key.clone(),
                    action: "delete",
                    chunks: record.point_ids.len(),
                    chunks_to_embed: 0,
                });
                continue;
            }
            let intent = intent(
                &ctx,
                &record.doc_key,
                record.parent_key.as_deref(),
                Some(&record),
                Vec::new(),
            );
            stale.extend(intent.point_ids.iter().copied());
            intents.push(intent);
            removed.push((record.source_id, record.doc_key));
        }
        if ctx.dry_run {
            continue;
        }
        cover_families(&mut intents, &finals);
        let committed = finals.iter().filter(|r| r.parent_key.is_none()).count() as u64;
        let (upserted, deleted) = (points.len() as u64, stale.len() as u64);
        let started = Instant::now();
        commit_protocol(&ctx, intents, points, stale, finals, removed).await?;
        stats.commit_ms += started.elapsed().as_millis() as u64;
        stats.points_upserted += upserted;
        stats.points_deleted += deleted;
        LiveCounters::add(&ctx.live.finished, committed);
        tracing::debug!(source = %ctx.source_id, docs = committed, points = upserted, stale = deleted, "batch committed");
    }
    Ok((stats, failures, planned))
}

/// Gives the parent of every attachment with an intent an intent of its own (its final row
/// marked `pending`), unless it has one: the parent is what a scan reports, so only a
/// `pending` parent makes the next run redo an attachment a crash left half-written.
fn cover_families(intents: &mut Vec<DocRecord>, finals: &[DocRecord]) {
    let parents: HashSet<&str> = intents
        .iter()
        .filter_map(|i| i.parent_key.as_deref())
        .collect();
    if parents.is_empty() {
        return;
    }
    let covered: HashSet<&str> = intents.iter().map(|i| i.doc_key.as_str()).collect();
    let missing: Vec<DocRecord> = finals
        .iter()
        .filter(|f| parents.contains(f.doc_key.as_str()) && !covered.contains(f.doc_key.as_str()))
        .map(|f| {
            let mut pending = f.clone();
            pending.status = DocStatus::Pending;
            pending.pending_point_ids = Some(f.point_ids.clone());
            pending
        })
        .collect();
    intents.extend(missing);
}

/// Intent, upsert, delete, commit: the order that keeps the ledger from ever vouching
/// for points the store lacks. `removed`: rows that go in the commit's transaction (the
/// attachments a message no longer carries; their points are among `stale`).
async fn commit_protocol(
    ctx: &Ctx,
    intents: Vec<DocRecord>,
    points: Vec<Point>,
    stale: Vec<PointId>,
    finals: Vec<DocRecord>,
    removed: Vec<(String, String)>,
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
            .commit_and_remove_fenced(&finals, &removed, fence)
            .await
            .map_err(Error::from)
    })
    .await;
    if let Err(Error::Ledger(LedgerError::LeaseLost { .. })) = &committed {
        if wrote {
            let mut keys: Vec<String> = finals.iter().map(|r| r.family_key().to_string()).collect();
            keys.sort();
            keys.dedup();
            note_lost_writes(ctx, keys).await;
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
        "media_type": doc.media.name(),
        "content_hash": doc.hash,
        "chunk_hash": chunk.hash,
        "fingerprint": ctx.fingerprint_for(Some(doc.media)),
        "decode_warning": doc.decode_warning,
        "indexed_at": indexed_at,
    }) else {
        unreachable!("json! object literal")
    };
    let mut map = map;
    if let Some(parent) = &doc.parent {
        // An attachment names its message and its own file name.
        let name = doc.key.strip_prefix(parent.as_str()).unwrap_or(&doc.key);
        map.insert("parent_key".into(), parent.clone().into());
        map.insert("attachment".into(), name.trim_start_matches('/').into());
    }
    for (field, value) in &doc.metadata {
        // freshet's own fields win; config validation keeps names from clashing.
        map.entry(field.clone()).or_insert_with(|| value.clone());
    }
    // In a PDF only some pages may have been read by OCR: `ocr` says whether this chunk's.
    if let (Some(pages), Some(first)) = (
        doc.metadata.get("ocr_pages").and_then(|p| p.as_array()),
        chunk.page,
    ) {
        let last = chunk.page_end.unwrap_or(first);
        let by_ocr = pages
            .iter()
            .filter_map(|p| p.as_u64())
            .any(|p| (first as u64..=last as u64).contains(&p));
        map.insert("ocr".into(), by_ocr.into());
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
pub(super) async fn retry<F, Fut>(what: &str, step: F) -> Result<()>
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_strings_lose_nul_characters_at_any_depth() {
        let mut value = serde_json::json!({"title": "a\u{0}b", "meta": {"tags": ["x\u{0}", 3]}});
        strip_nul(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"title": "ab", "meta": {"tags": ["x", 3]}})
        );
    }
}
