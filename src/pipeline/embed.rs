//! Stage 2, embedding: groups prepared documents into batches and gives each chunk a
//! vector, reusing the index's vector for any chunk it already holds — only chunks the
//! index lacks reach the model, and a document the model rejects fails alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::gate::send;
use super::prepare::Settled;
use super::{Ctx, EmbeddedBatch, Outcome, PreparedDoc, Work, GATE_BATCH, REUSE_LOOKUP};
use crate::ledger::{DocRecord, DocStatus};
use crate::store::{Filter, PointId};
use crate::telemetry::LiveCounters;
use crate::{Error, Result};

/// Stage 2: groups prepared documents into batches of about `commit_batch_chunks` chunks,
/// reuses vectors of chunks the index already holds, and embeds the rest on the blocking
/// pool while stage 1 prepares the next batch.
pub(super) async fn embed_batches(
    ctx: Arc<Ctx>,
    mut work: mpsc::Receiver<Work>,
    batches: mpsc::Sender<EmbeddedBatch>,
) -> Result<()> {
    while let Some(first) = work.recv().await {
        let mut docs = Vec::new();
        let mut records = Vec::new();
        let mut removed = Vec::new();
        let mut chunk_count = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let before = docs.len();
            gather(item, &mut docs, &mut records, &mut removed);
            chunk_count += docs[before..].iter().map(|d| d.chunks.len()).sum::<usize>();
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
                removed,
                to_embed,
            },
        )
        .await?;
    }
    Ok(())
}

/// Adds one unit of work to the batch being gathered (a family whole: it is never split
/// across batches).
fn gather(
    item: Work,
    docs: &mut Vec<PreparedDoc>,
    records: &mut Vec<(DocRecord, Outcome, Vec<PointId>)>,
    removed: &mut Vec<DocRecord>,
) {
    match item {
        Work::Index(doc) => docs.push(doc),
        Work::Record {
            record,
            outcome,
            drop_ids,
        } => records.push((record, outcome, drop_ids)),
        Work::Family {
            members,
            removed: gone,
        } => {
            for member in members {
                gather(member, docs, records, removed);
            }
            removed.extend(gone);
        }
    }
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
        // The embedder itself failed (a service down or answering garbage): the run
        // stops before anything of this batch is stored or recorded.
        Err(err) if !err.blames_input() => return Err(err.into()),
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
        parent_key: doc.parent.clone(),
    }
    .settle(ctx, &doc.key, &doc.version, doc.prior.as_ref())
}
