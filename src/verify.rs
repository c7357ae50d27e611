//! Compares the ledger with the store and repairs drift: points the ledger vouches for but
//! the store lacks, points the store holds that no ledger row knows, and points whose
//! payload disagrees with their row.
//!
//! Invariant: repair only deletes points no ledger row may have, and only makes rows
//! re-index; it never edits a row to match the store (the ledger is the source of truth
//! about what the source held; the store is rebuilt from the source).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::index::Index;
use crate::ledger::{DocRecord, DocStatus};
use crate::pipeline::{RunReport, SyncOptions};
use crate::store::PointId;
use crate::Result;

/// Ledger rows (and store points) read per page.
const PAGE: usize = 1000;
/// Orphan ids listed one by one in a report (the count covers all of them).
const MAX_LISTED: usize = 1000;

/// A document whose points are not what its ledger row says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocDrift {
    pub source_id: String,
    pub doc_key: String,
    pub missing_points: usize,
    pub mismatched_points: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub collection: String,
    pub documents_checked: u64,
    pub points_expected: u64,
    pub points_in_store: u64,
    /// Points the ledger vouches for that the store lacks.
    pub missing_points: u64,
    /// Points in the store that no ledger row knows.
    pub orphan_points: u64,
    /// Points whose payload disagrees with their ledger row (document, chunk, content).
    pub mismatched_points: u64,
    /// Documents whose last write was interrupted; the next sync redoes them.
    pub pending_documents: u64,
    /// Every document with missing or mismatched points.
    pub drifted_documents: Vec<DocDrift>,
    /// The first orphan ids (at most 1000).
    pub orphan_ids: Vec<PointId>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing_points == 0 && self.orphan_points == 0 && self.mismatched_points == 0
    }
}

/// What `verify --repair` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepairReport {
    pub before: VerifyReport,
    pub orphans_deleted: u64,
    pub documents_reindexed: u64,
    pub sync: RunReport,
    pub after: VerifyReport,
}

/// What a point's payload must say, per its ledger row.
struct Expected {
    source_id: String,
    doc_key: String,
    chunk_index: usize,
    chunk_hash: Option<String>,
    content_hash: Option<String>,
}

impl Index {
    /// Every ledger row, source by source.
    async fn all_records(&self) -> Result<Vec<DocRecord>> {
        let mut records = Vec::new();
        for source_id in self.ledger.source_ids().await? {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .ledger
                    .records_page(&source_id, after.as_deref(), PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.doc_key.clone());
                records.extend(page);
            }
        }
        Ok(records)
    }

    /// Compares every ledger row with the points of the current collection.
    pub async fn verify(&self) -> Result<VerifyReport> {
        Ok(self.check().await?.0)
    }

    /// The report and every orphan id (the report lists only the first ones).
    async fn check(&self) -> Result<(VerifyReport, Vec<PointId>)> {
        let mut report = VerifyReport {
            collection: self.info.collection.clone(),
            ..VerifyReport::default()
        };
        let mut expected: HashMap<PointId, Expected> = HashMap::new();
        // Points an interrupted write may have left: neither missing nor orphans.
        let mut in_flux: HashSet<PointId> = HashSet::new();
        for record in self.all_records().await? {
            report.documents_checked += 1;
            if record.collection != self.info.collection && !record.point_ids.is_empty() {
                // Rows still describing a previous model's collection.
                continue;
            }
            if record.status == DocStatus::Pending {
                report.pending_documents += 1;
                in_flux.extend(record.point_ids.iter().copied());
                in_flux.extend(record.pending_point_ids.iter().flatten().copied());
                continue;
            }
            for (i, id) in record.point_ids.iter().enumerate() {
                expected.insert(
                    *id,
                    Expected {
                        source_id: record.source_id.clone(),
                        doc_key: record.doc_key.clone(),
                        chunk_index: i,
                        chunk_hash: record.chunk_hashes.get(i).cloned(),
                        // A failed document serves the points of its last good version.
                        content_hash: (record.status == DocStatus::Indexed)
                            .then(|| record.content_hash.clone())
                            .flatten(),
                    },
                );
            }
        }
        report.points_expected = expected.len() as u64;

        let mut orphans = Vec::new();
        let mut seen: HashSet<PointId> = HashSet::with_capacity(expected.len());
        let mut drift: HashMap<(String, String), DocDrift> = HashMap::new();
        let mut offset = None;
        loop {
            let (points, next) = self.store.scroll(offset, PAGE, None, false).await?;
            for point in points {
                report.points_in_store += 1;
                let Some(want) = expected.get(&point.id) else {
                    if !in_flux.contains(&point.id) {
                        orphans.push(point.id);
                    }
                    continue;
                };
                seen.insert(point.id);
                let field = |k: &str| point.payload.get(k).and_then(|v| v.as_str());
                let agrees = field("source_id") == Some(want.source_id.as_str())
                    && field("doc_key") == Some(want.doc_key.as_str())
                    && point.payload.get("chunk_index").and_then(|v| v.as_u64())
                        == Some(want.chunk_index as u64)
                    && (want.chunk_hash.is_none()
                        || field("chunk_hash") == want.chunk_hash.as_deref())
                    && (want.content_hash.is_none()
                        || field("content_hash") == want.content_hash.as_deref());
                if !agrees {
                    report.mismatched_points += 1;
                    drift_entry(&mut drift, want).mismatched_points += 1;
                }
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        for (id, want) in &expected {
            if !seen.contains(id) {
                report.missing_points += 1;
                drift_entry(&mut drift, want).missing_points += 1;
            }
        }
        let mut drifted: Vec<DocDrift> = drift.into_values().collect();
        drifted.sort_by(|a, b| (&a.source_id, &a.doc_key).cmp(&(&b.source_id, &b.doc_key)));
        report.drifted_documents = drifted;
        report.orphan_points = orphans.len() as u64;
        report.orphan_ids = orphans.iter().take(MAX_LISTED).copied().collect();
        Ok((report, orphans))
    }

    /// Verifies, deletes orphan points, re-indexes drifted documents (and interrupted
    /// ones) with a normal sync, and verifies again.
    pub async fn repair(&self, options: &SyncOptions) -> Result<RepairReport> {
        let (before, orphans) = self.check().await?;
        let orphans_deleted = orphans.len() as u64;
        if !orphans.is_empty() {
            self.store.delete(orphans).await?;
        }
        let mut by_source: HashMap<String, Vec<String>> = HashMap::new();
        for doc in &before.drifted_documents {
            by_source
                .entry(doc.source_id.clone())
                .or_default()
                .push(doc.doc_key.clone());
        }
        let mut documents_reindexed = 0;
        for (source_id, keys) in &by_source {
            documents_reindexed += keys.len() as u64;
            self.ledger.invalidate(source_id, keys).await?;
        }
        let sync = self.sync(options).await?;
        let after = self.verify().await?;
        Ok(RepairReport {
            before,
            orphans_deleted,
            documents_reindexed,
            sync,
            after,
        })
    }
}

fn drift_entry<'a>(
    drift: &'a mut HashMap<(String, String), DocDrift>,
    want: &Expected,
) -> &'a mut DocDrift {
    drift
        .entry((want.source_id.clone(), want.doc_key.clone()))
        .or_insert_with(|| DocDrift {
            source_id: want.source_id.clone(),
            doc_key: want.doc_key.clone(),
            missing_points: 0,
            mismatched_points: 0,
        })
}
