//! Compares the ledger with the store and repairs drift: points the ledger vouches for but
//! the store lacks, points the store holds that no ledger row knows, and points whose
//! payload disagrees with their row.
//!
//! Invariant: repair only deletes points no ledger row may have, and only makes rows
//! re-index; it never edits a row to match the store (the ledger is the source of truth
//! about what the source held; the store is rebuilt from the source).
//!
//! Memory stays bounded by a page, whatever the corpus: two passes, each holding one page
//! of ledger rows or store points at a time.
//!
//! 1. Ledger -> store: a page of a source's rows, then the store's points of those
//!    documents (a payload filter on `source_id` and `doc_key`, scrolled a page at a time),
//!    each matched to the row its payload names. Finds missing and mismatched points, and
//!    counts the points the rows vouch for (a pending row vouches for the points it may
//!    have, and none of its points is missing or mismatched).
//! 2. Store -> ledger, only when the store holds more (or fewer) points than pass 1 found
//!    vouched for: every point, a page at a time, with the rows its payload names looked
//!    up. A point no row vouches for is an orphan; repair deletes each page's orphans
//!    before reading the next page (scrolls go in id order and the next offset is a point
//!    of the next page, so deleting points already read leaves the rest of the scroll as
//!    it was).
//!
//! Point ids are derived from (source, document, chunk index), so a point's payload names
//! the row that vouches for its id. Only drift behind freshet's back breaks that: a point
//! whose id one row vouches for but whose payload names another document (or none) counts
//! as missing for the row and as an orphan. Repair deletes it and re-indexes the row, which
//! writes the point again with the row's own payload.

use std::collections::HashMap;

use serde::Serialize;

use crate::index::Index;
use crate::ledger::{DocRecord, DocStatus, LOOKUP_BATCH};
use crate::pipeline::{RunReport, SyncOptions};
use crate::store::{Filter, PointId, StoredPoint};
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

/// One row of a ledger page checked against the store: which of its points were seen,
/// and how many disagree with it.
struct RowCheck<'a> {
    record: &'a DocRecord,
    /// A pending row's points are in flux: any of `point_ids` and `pending_point_ids` may
    /// be stored, and none is missing or mismatched.
    pending: bool,
    /// The ids the row vouches for; the first `point_ids.len()` are its chunks in order.
    ids: Vec<PointId>,
    /// Id -> slot in `ids`, for rows with many points (short rows are searched).
    slots: Option<HashMap<PointId, usize>>,
    seen: Vec<bool>,
    mismatched: usize,
}

/// Ids a row holds beyond which a lookup table beats a linear search.
const SEARCHED_IDS: usize = 16;

impl<'a> RowCheck<'a> {
    fn new(record: &'a DocRecord) -> Self {
        let pending = record.status == DocStatus::Pending;
        let mut ids = record.point_ids.clone();
        if pending {
            ids.extend(record.pending_point_ids.iter().flatten().copied());
        }
        let slots = (ids.len() > SEARCHED_IDS).then(|| {
            let mut slots = HashMap::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                slots.entry(*id).or_insert(i);
            }
            slots
        });
        Self {
            record,
            pending,
            seen: vec![false; ids.len()],
            ids,
            slots,
            mismatched: 0,
        }
    }

    fn slot(&self, id: &PointId) -> Option<usize> {
        match &self.slots {
            Some(slots) => slots.get(id).copied(),
            None => self.ids.iter().position(|x| x == id),
        }
    }

    /// A stored point whose payload names this row's document. Returns whether it is one
    /// the row vouches for, seen for the first time.
    fn observe(&mut self, point: &StoredPoint) -> bool {
        let Some(i) = self.slot(&point.id) else {
            // Not one of the row's points: an orphan (pass 2 lists it).
            return false;
        };
        if std::mem::replace(&mut self.seen[i], true) {
            return false;
        }
        if self.pending {
            return true;
        }
        let record = self.record;
        let field = |k: &str| point.payload.get(k).and_then(|v| v.as_str());
        // A failed document serves the points of its last good version.
        let content_hash = (record.status == DocStatus::Indexed)
            .then_some(record.content_hash.as_deref())
            .flatten();
        let chunk_hash = record.chunk_hashes.get(i).map(String::as_str);
        let agrees = field("source_id") == Some(record.source_id.as_str())
            && field("doc_key") == Some(record.doc_key.as_str())
            && point.payload.get("chunk_index").and_then(|v| v.as_u64()) == Some(i as u64)
            && (chunk_hash.is_none() || field("chunk_hash") == chunk_hash)
            && (content_hash.is_none() || field("content_hash") == content_hash);
        if !agrees {
            self.mismatched += 1;
        }
        true
    }

    /// The row's chunks the store lacks (none for a pending row).
    fn missing(&self) -> usize {
        if self.pending {
            return 0;
        }
        self.seen[..self.record.point_ids.len()]
            .iter()
            .filter(|seen| !**seen)
            .count()
    }
}

impl Index {
    /// Compares every ledger row with the points of the current collection.
    pub async fn verify(&self) -> Result<VerifyReport> {
        self.check(false).await
    }

    /// The report; with `delete_orphans`, orphan points are deleted as they are found.
    async fn check(&self, delete_orphans: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            collection: self.info.collection.clone(),
            ..VerifyReport::default()
        };
        let vouched = self.check_rows(&mut report).await?;
        // Every point pass 1 saw is one the ledger vouches for, seen once; when the store
        // holds just as many, none is an orphan and pass 2 has nothing to find.
        let in_store = self.store.count(None).await? as u64;
        if in_store == vouched {
            report.points_in_store = in_store;
        } else {
            self.check_points(&mut report, delete_orphans).await?;
        }
        report
            .drifted_documents
            .sort_by(|a, b| (&a.source_id, &a.doc_key).cmp(&(&b.source_id, &b.doc_key)));
        Ok(report)
    }

    /// Whether a row speaks for points of the current collection (a row with points in a
    /// previous model's collection does not; a row without points may be about to).
    fn describes_current(&self, record: &DocRecord) -> bool {
        record.collection == self.info.collection || record.point_ids.is_empty()
    }

    /// Pass 1: every ledger row, a page at a time, against the points its document has.
    /// Returns how many stored points the rows vouch for.
    async fn check_rows(&self, report: &mut VerifyReport) -> Result<u64> {
        let mut vouched = 0;
        for source_id in self.ledger.source_ids().await? {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .ledger
                    .records_page(&source_id, after.as_deref(), PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.doc_key.clone());
                let mut rows = Vec::new();
                for record in &page {
                    report.documents_checked += 1;
                    if !self.describes_current(record) {
                        // Rows still describing a previous model's collection.
                        continue;
                    }
                    if record.status == DocStatus::Pending {
                        // Its points are in flux; the next sync redoes it.
                        report.pending_documents += 1;
                    }
                    let row = RowCheck::new(record);
                    if !row.ids.is_empty() {
                        rows.push(row);
                    }
                }
                vouched += self.check_page(&source_id, &mut rows).await?;
                for row in rows.iter().filter(|row| !row.pending) {
                    let missing = row.missing();
                    report.points_expected += row.record.point_ids.len() as u64;
                    report.missing_points += missing as u64;
                    report.mismatched_points += row.mismatched as u64;
                    if missing > 0 || row.mismatched > 0 {
                        report.drifted_documents.push(DocDrift {
                            source_id: row.record.source_id.clone(),
                            doc_key: row.record.doc_key.clone(),
                            missing_points: missing,
                            mismatched_points: row.mismatched,
                        });
                    }
                }
                if page.len() < PAGE {
                    break;
                }
            }
        }
        Ok(vouched)
    }

    /// Reads the store's points of these rows' documents, a page at a time. Returns how
    /// many of them the rows vouch for.
    async fn check_page(&self, source_id: &str, rows: &mut [RowCheck<'_>]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let records: Vec<&DocRecord> = rows.iter().map(|row| row.record).collect();
        let by_key: HashMap<&str, usize> = records
            .iter()
            .enumerate()
            .map(|(i, record)| (record.doc_key.as_str(), i))
            .collect();
        let filter = Filter::default().field("source_id", source_id).any_of(
            "doc_key",
            records.iter().map(|r| r.doc_key.clone()).collect(),
        );
        let mut vouched = 0;
        let mut offset = None;
        loop {
            let (points, next) = self
                .store
                .scroll(offset, PAGE, Some(filter.clone()), false)
                .await?;
            for point in &points {
                let field = |k: &str| point.payload.get(k).and_then(|v| v.as_str());
                if field("source_id") != Some(source_id) {
                    continue;
                }
                if let Some(&i) = field("doc_key").and_then(|key| by_key.get(key)) {
                    if rows[i].observe(point) {
                        vouched += 1;
                    }
                }
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(vouched)
    }

    /// Pass 2: every point in the store, a page at a time, against the row its payload
    /// names. Counts (and lists the first) orphans; deletes them when asked.
    async fn check_points(&self, report: &mut VerifyReport, delete_orphans: bool) -> Result<()> {
        let mut offset = None;
        loop {
            let (points, next) = self.store.scroll(offset, PAGE, None, false).await?;
            report.points_in_store += points.len() as u64;
            let orphans = self.orphans_among(&points).await?;
            report.orphan_points += orphans.len() as u64;
            let room = MAX_LISTED.saturating_sub(report.orphan_ids.len());
            report.orphan_ids.extend(orphans.iter().take(room).copied());
            if delete_orphans && !orphans.is_empty() {
                // Every id here precedes `next`, so the scroll goes on where it would have.
                self.store.delete(orphans).await?;
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(())
    }

    /// The points (in scroll order) that no ledger row vouches for: the row their payload
    /// names is absent, describes another collection, or does not hold their id (a pending
    /// row also vouches for the ids being written).
    async fn orphans_among(&self, points: &[StoredPoint]) -> Result<Vec<PointId>> {
        let mut orphan = vec![true; points.len()];
        // Source -> document -> indexes into `points`.
        let mut by_doc: HashMap<&str, HashMap<&str, Vec<usize>>> = HashMap::new();
        for (i, point) in points.iter().enumerate() {
            let field = |k: &str| point.payload.get(k).and_then(|v| v.as_str());
            if let (Some(source_id), Some(doc_key)) = (field("source_id"), field("doc_key")) {
                by_doc
                    .entry(source_id)
                    .or_default()
                    .entry(doc_key)
                    .or_default()
                    .push(i);
            }
        }
        for (source_id, docs) in &by_doc {
            let keys: Vec<&str> = docs.keys().copied().collect();
            for batch in keys.chunks(LOOKUP_BATCH) {
                let rows = self.ledger.lookup(source_id, batch).await?;
                for (key, record) in &rows {
                    if !self.describes_current(record) {
                        continue;
                    }
                    let Some(indexes) = docs.get(key.as_str()) else {
                        continue;
                    };
                    let row = RowCheck::new(record);
                    for &i in indexes {
                        if row.slot(&points[i].id).is_some() {
                            orphan[i] = false;
                        }
                    }
                }
            }
        }
        Ok(points
            .iter()
            .zip(orphan)
            .filter(|(_, orphan)| *orphan)
            .map(|(point, _)| point.id)
            .collect())
    }

    /// Verifies (deleting orphan points as it finds them), re-indexes drifted documents
    /// (and interrupted ones) with a normal sync, and verifies again.
    pub async fn repair(&self, options: &SyncOptions) -> Result<RepairReport> {
        let before = self.check(true).await?;
        let orphans_deleted = before.orphan_points;
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
