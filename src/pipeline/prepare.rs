//! Reading, extracting and chunking one document (on the blocking pool) with the documents
//! it carries (an email's attachments), and settling one that yields no new points — a
//! document that cannot be indexed fails alone, never the run, and keeps serving only the
//! points its row vouches for.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use freshet_connectors::{content_hash, RawDoc, ReadError};

use super::{Ctx, Outcome, PreparedDoc, Work};
use crate::chunk::Chunk;
use crate::extract::{extract_with, ExtractError, Extracted, MediaType};
use crate::ledger::{now, DocRecord, DocStatus};
use crate::store::PointId;

/// How a document that ends without new points (failed or skipped) is settled: its row,
/// and the points to delete with it.
pub(super) struct Settled {
    pub(super) status: DocStatus,
    pub(super) reason: String,
    pub(super) hash: Option<String>,
    pub(super) media: Option<MediaType>,
    pub(super) decode_warning: Option<String>,
    /// The key of the document this one was carried in (an attachment's message).
    pub(super) parent_key: Option<String>,
}

impl Settled {
    pub(super) fn settle(
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
            fingerprint: ctx.fingerprint_for(self.media).to_string(),
            status: self.status,
            reason: Some(self.reason),
            media_type: self.media.map(|m| m.name().to_string()),
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
            parent_key: self.parent_key,
        };
        (record, outcome, drop_ids)
    }
}

/// A document carried inside another, extracted and chunked (or why it could not be).
struct Carried {
    name: String,
    media: MediaType,
    hash: String,
    doc: Result<(Extracted, Vec<Chunk>), String>,
}

/// Reads, hashes, extracts and chunks one document (blocking), and the documents carried
/// inside it; `children` are the rows of those it carried before.
pub(super) fn prepare(
    ctx: &Ctx,
    doc: RawDoc,
    prior: Option<DocRecord>,
    children: Vec<DocRecord>,
) -> Work {
    let key = doc.key.clone();
    let version = doc.version.clone();
    // Retrying failures retries a failed attachment by extracting its message again,
    // even where the message itself is unchanged.
    let reread = ctx.retry_failed && children.iter().any(|c| c.status == DocStatus::Failed);
    let (work, carried) = prepare_document(ctx, doc, prior, reread);
    match carried {
        Some(carried) => family(ctx, &key, &version, work, carried, children),
        None if children.is_empty() => work,
        // Read but not indexed. One skipped (now empty) serves nothing, its attachments
        // included; one that failed keeps serving what its row and its attachments' rows
        // vouch for.
        None => match &work {
            Work::Record {
                outcome: Outcome::Skipped,
                ..
            } => Work::Family {
                members: vec![work],
                removed: children,
            },
            Work::Record { record, .. } => {
                let why = format!(
                    "its message could not be indexed: {}",
                    record.reason.as_deref().unwrap_or("no reason given")
                );
                settle_pending_children(ctx, &key, &version, work, children, &why)
            }
            _ => work,
        },
    }
}

/// A message that is not indexed this time (failed, quarantined) leaves its attachments
/// serving what their rows vouch for; but an attachment a crash left `pending` vouches
/// for nothing, and its message will not be redone for it: it is settled as failed, and
/// the points it may have go.
pub(super) fn settle_pending_children(
    ctx: &Ctx,
    key: &str,
    version: &str,
    parent: Work,
    children: Vec<DocRecord>,
    why: &str,
) -> Work {
    let settled: Vec<Work> = children
        .into_iter()
        .filter(|child| child.status == DocStatus::Pending)
        .map(|child| {
            let (record, outcome, drop_ids) = Settled {
                status: DocStatus::Failed,
                reason: why.to_string(),
                hash: child.content_hash.clone(),
                media: child.media_type.as_deref().and_then(MediaType::from_name),
                decode_warning: None,
                parent_key: Some(key.to_string()),
            }
            .settle(ctx, &child.doc_key, version, Some(&child));
            Work::Record {
                record,
                outcome,
                drop_ids,
            }
        })
        .collect();
    if settled.is_empty() {
        return parent;
    }
    Work::Family {
        members: std::iter::once(parent).chain(settled).collect(),
        removed: Vec::new(),
    }
}

/// The parent's work with the documents it carries: each attachment indexed or failed
/// under its own key, `<parent key>/<name>`, and the rows of those it no longer carries
/// removed.
fn family(
    ctx: &Ctx,
    key: &str,
    version: &str,
    parent: Work,
    carried: Vec<Carried>,
    children: Vec<DocRecord>,
) -> Work {
    if carried.is_empty() && children.is_empty() {
        return parent;
    }
    // An attachment is found by its message's fields (subject, sender, the source's
    // columns) too.
    let inherited = match &parent {
        Work::Index(doc) => doc.metadata.clone(),
        _ => Default::default(),
    };
    let mut priors: HashMap<String, DocRecord> = children
        .into_iter()
        .map(|c| (c.doc_key.clone(), c))
        .collect();
    let mut members = vec![parent];
    for part in carried {
        let child_key = format!("{key}/{}", part.name);
        match part.doc {
            Ok((extracted, chunks)) => {
                if chunks.is_empty() {
                    // Nothing to index: not a document (a row it had goes).
                    continue;
                }
                let mut metadata = inherited.clone();
                for (field, value) in extracted.metadata {
                    metadata.entry(field).or_insert(value);
                }
                members.push(Work::Index(PreparedDoc {
                    prior: priors.remove(&child_key),
                    key: child_key,
                    version: version.to_string(),
                    hash: part.hash,
                    media: part.media,
                    title: extracted.title,
                    decode_warning: extracted.decode_warning,
                    chunks,
                    metadata,
                    parent: Some(key.to_string()),
                }));
            }
            Err(reason) => {
                let prior = priors.remove(&child_key);
                let (record, outcome, drop_ids) = Settled {
                    status: DocStatus::Failed,
                    reason,
                    hash: Some(part.hash),
                    media: Some(part.media),
                    decode_warning: None,
                    parent_key: Some(key.to_string()),
                }
                .settle(ctx, &child_key, version, prior.as_ref());
                members.push(Work::Record {
                    record,
                    outcome,
                    drop_ids,
                });
            }
        }
    }
    let mut removed: Vec<DocRecord> = priors.into_values().collect();
    removed.sort_by(|a, b| a.doc_key.cmp(&b.doc_key));
    Work::Family { members, removed }
}

/// Reads, hashes, extracts and chunks one document (blocking); with the documents it
/// carries when it was extracted. `reread`: extract it even if its content is unchanged.
fn prepare_document(
    ctx: &Ctx,
    doc: RawDoc,
    prior: Option<DocRecord>,
    reread: bool,
) -> (Work, Option<Vec<Carried>>) {
    let record = |status: DocStatus,
                  reason: String,
                  hash: Option<String>,
                  media: Option<MediaType>|
     -> (Work, Option<Vec<Carried>>) {
        let (record, outcome, drop_ids) = Settled {
            status,
            reason,
            hash,
            media,
            decode_warning: None,
            parent_key: None,
        }
        .settle(ctx, &doc.key, &doc.version, prior.as_ref());
        let work = Work::Record {
            record,
            outcome,
            drop_ids,
        };
        (work, None)
    };
    let file_name = doc.key.rsplit('/').next().unwrap_or(&doc.key);
    if file_name.starts_with("~$") && doc.media.is_none() {
        // Word, Excel and PowerPoint leave these beside an open document.
        return record(
            DocStatus::Skipped,
            "an Office owner (lock) file, not a document; add `**/~$*` to `exclude` to silence this".into(),
            None,
            None,
        );
    }
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
    if let Some(reason) = ctx.extract.skip_unread(media) {
        return record(DocStatus::Skipped, reason, None, Some(media));
    }
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
    if let Some(p) = prior.as_ref().filter(|_| !reread) {
        if p.status == DocStatus::Indexed
            && p.content_hash.as_deref() == Some(hash.as_str())
            && p.fingerprint == ctx.fingerprint_for(Some(media))
            && p.collection == ctx.collection
        {
            let mut same = p.clone();
            same.version_hint = doc.version.clone();
            same.updated_at = now();
            let work = Work::Record {
                record: same,
                outcome: Outcome::ContentUnchanged,
                drop_ids: Vec::new(),
            };
            return (work, None);
        }
    }
    // Parsers of untrusted bytes can panic; one bad document must not end the run.
    let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        extract_with(&bytes, media, &ctx.extract).map(|mut extracted| {
            let chunks = ctx.chunker.chunk(&extracted, media);
            let carried: Vec<Carried> = std::mem::take(&mut extracted.parts)
                .into_iter()
                .map(|part| Carried {
                    doc: part.doc.map(|doc| {
                        let chunks = ctx.chunker.chunk(&doc, part.media);
                        (doc, chunks)
                    }),
                    name: part.name,
                    media: part.media,
                    hash: part.hash,
                })
                .collect();
            (extracted, chunks, carried)
        })
    }));
    drop(bytes);
    match parsed {
        Ok(Ok((extracted, chunks, carried))) => {
            // A message may be only its attachments: it is indexed with no points of
            // its own, and they are documents of their own.
            if chunks.is_empty() && carried.is_empty() {
                return record(
                    DocStatus::Skipped,
                    "no text to index after cleaning".into(),
                    Some(hash),
                    Some(media),
                );
            }
            // Fields the format carries (an email's subject) join the source's; the
            // source's win a clash.
            let mut metadata = doc.metadata;
            for (field, value) in extracted.metadata {
                metadata.entry(field).or_insert(value);
            }
            let work = Work::Index(PreparedDoc {
                key: doc.key,
                version: doc.version,
                hash,
                media,
                title: extracted.title,
                decode_warning: extracted.decode_warning,
                chunks,
                prior,
                metadata,
                parent: None,
            });
            (work, Some(carried))
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
                    media.name()
                ),
                Some(hash),
                Some(media),
            )
        }
    }
}
