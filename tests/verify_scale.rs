//! verify at scale: 200,000 ledger rows checked against the store with memory bounded by a
//! page (the peak growth during verify is printed, and bounded where Linux lets the test
//! reset its peak), and repair deleting orphans page by page.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{points, StoreKind, Workspace};
use freshet::ledger::{DocRecord, DocStatus};
use freshet::pipeline::SyncOptions;
use freshet::store::{Payload, Point, PointId};
use freshet::verify::VerifyReport;
use freshet::Index;

const SOURCE: &str = "scale";
const ROWS: usize = 200_000;
/// Rows per ledger commit; points go to the store in halves of it.
const COMMIT_ROWS: usize = 2_000;
const UPSERT_POINTS: usize = 1_000;

/// Peak growth allowed while verify runs. Verify before paging read every ledger row into
/// memory at once, then kept a map entry (several Strings) per expected point and a set of
/// the ids seen: measured with this test, its peak grew by about 250 MiB at 200,000 rows
/// (O(corpus): ~1.3 KiB a row). Paged, verify holds one page of 1,000 rows or points at a
/// time, and grew it by under 10 MiB here, whatever the row count. The bound leaves room for
/// the allocator, the ledger's and the store engine's caches (the embedded engine maps its
/// payload files, and pages it reads count as RSS) while failing an O(corpus) verify.
const PEAK_BOUND_MIB: f64 = 64.0;

fn key(i: usize) -> String {
    format!("doc-{i:06}.txt")
}

fn point_id(i: usize) -> PointId {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key(i).as_bytes())
}

fn content_hash(i: usize) -> String {
    format!("content-{i}")
}

fn chunk_hash(i: usize) -> String {
    format!("chunk-{i}")
}

fn payload(i: usize, content_hash: &str) -> Payload {
    let serde_json::Value::Object(map) = serde_json::json!({
        "source_id": SOURCE,
        "doc_key": key(i),
        "chunk_index": 0,
        "chunk_hash": chunk_hash(i),
        "content_hash": content_hash,
        "text": "a few words",
    }) else {
        unreachable!("json! object literal")
    };
    map
}

/// A cheap, finite, non-zero vector (a few distinct ones: pgvector's HNSW index takes
/// 200,000 of these faster than as many different vectors).
fn vector(i: usize, dim: usize) -> Vec<f32> {
    (0..dim).map(|j| 1.0 + ((i + j) % 7) as f32).collect()
}

fn record(index: &Index, i: usize, fingerprint: &str, now: &str) -> DocRecord {
    DocRecord {
        source_id: SOURCE.into(),
        doc_key: key(i),
        version_hint: format!("v{i}"),
        content_hash: Some(content_hash(i)),
        fingerprint: fingerprint.into(),
        status: DocStatus::Indexed,
        reason: None,
        media_type: Some("text/plain".into()),
        collection: index.info.collection.clone(),
        point_ids: vec![point_id(i)],
        pending_point_ids: None,
        chunk_hashes: vec![chunk_hash(i)],
        decode_warning: None,
        first_indexed_at: Some(now.into()),
        updated_at: now.into(),
        parent_key: None,
    }
}

/// Writes `ROWS` one-point documents: points first, then their rows, as the pipeline does.
async fn populate(index: &Index) {
    let fingerprint = index.fingerprint();
    let now = freshet::ledger::now();
    let dim = index.info.dim;
    for start in (0..ROWS).step_by(COMMIT_ROWS) {
        let end = (start + COMMIT_ROWS).min(ROWS);
        for from in (start..end).step_by(UPSERT_POINTS) {
            let to = (from + UPSERT_POINTS).min(end);
            let points = (from..to)
                .map(|i| Point {
                    id: point_id(i),
                    vector: vector(i, dim),
                    sparse: None,
                    payload: payload(i, &content_hash(i)),
                })
                .collect();
            index.store.upsert(points).await.unwrap();
        }
        let records: Vec<DocRecord> = (start..end)
            .map(|i| record(index, i, &fingerprint, &now))
            .collect();
        index.ledger.commit(&records).await.unwrap();
    }
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_200k_rows_in_bounded_memory() {
    verify_at_scale(StoreKind::Embedded).await;
}

/// The ledger on PostgreSQL (the shared ledger of several workers) and the points in
/// pgvector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_200k_rows_in_bounded_memory_with_a_postgres_ledger_on_pgvector() {
    if common::shared_ledger("verify at scale on a PostgreSQL ledger") {
        verify_at_scale(StoreKind::Pgvector).await;
    }
}

async fn verify_at_scale(kind: StoreKind) {
    let ws = Workspace::empty_on(kind);
    let mut config = ws.config();
    if kind == StoreKind::Pgvector {
        config.ledger = common::shared_ledger_config(10);
    }
    let index = ws.open_with(config).await;
    let started = Instant::now();
    populate(&index).await;
    eprintln!(
        "verify at scale ({kind:?}): wrote {ROWS} rows and points in {:.1?}",
        started.elapsed()
    );

    // A write in flight: the row of document 99 pending, with a point being written.
    let in_flight = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"in flight");
    let mut pending = index
        .ledger
        .lookup(SOURCE, &[key(99).as_str()])
        .await
        .unwrap()
        .remove(&key(99))
        .unwrap();
    pending.status = DocStatus::Pending;
    pending.pending_point_ids = Some(vec![in_flight]);
    index.ledger.commit(&[pending]).await.unwrap();
    index
        .store
        .upsert(vec![Point {
            id: in_flight,
            vector: vector(99, index.info.dim),
            sparse: None,
            payload: payload(99, "the next version"),
        }])
        .await
        .unwrap();

    // Clean: every stored point is one pass 1 saw, so verify skips the orphan pass.
    let (report, peak_growth) = measured_verify(&index, kind, "clean").await;
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.documents_checked, ROWS as u64);
    assert_eq!(report.points_expected, (ROWS - 1) as u64);
    assert_eq!(report.points_in_store, (ROWS + 1) as u64);
    assert_eq!(report.pending_documents, 1);
    check_peak(peak_growth);

    // Drift behind freshet's back: points deleted from the store (missing), rows removed
    // from the ledger (their points become orphans), payloads that say other content.
    let missing: Vec<usize> = (0..10).map(|k| 1_000 + k * 19_000).collect();
    let removed: Vec<usize> = (0..5).map(|k| 500 + k * 37_000).collect();
    let mismatched: Vec<usize> = (0..3).map(|k| 7 + k * 66_000).collect();
    index
        .store
        .delete(missing.iter().map(|&i| point_id(i)).collect())
        .await
        .unwrap();
    index
        .ledger
        .remove(SOURCE, &removed.iter().map(|&i| key(i)).collect::<Vec<_>>())
        .await
        .unwrap();
    index
        .store
        .upsert(
            mismatched
                .iter()
                .map(|&i| Point {
                    id: point_id(i),
                    vector: vector(i, index.info.dim),
                    sparse: None,
                    payload: payload(i, "not-the-content"),
                })
                .collect(),
        )
        .await
        .unwrap();

    let (report, peak_growth) = measured_verify(&index, kind, "drifted").await;
    let mut orphans = report.orphan_ids.clone();
    orphans.sort();
    let mut want_orphans: Vec<PointId> = removed.iter().map(|&i| point_id(i)).collect();
    want_orphans.sort();
    assert_eq!(report.documents_checked, (ROWS - 5) as u64, "{report:#?}");
    assert_eq!(
        report.points_expected,
        (ROWS - 5 - 1) as u64,
        "one row is pending"
    );
    assert_eq!(report.points_in_store, (ROWS - 10 + 1) as u64);
    assert_eq!(report.missing_points, 10);
    assert_eq!(report.orphan_points, 5);
    assert_eq!(orphans, want_orphans);
    assert_eq!(report.mismatched_points, 3);
    assert_eq!(report.pending_documents, 1);
    let mut drifted: Vec<String> = missing.iter().chain(&mismatched).map(|&i| key(i)).collect();
    drifted.sort();
    assert_eq!(
        report
            .drifted_documents
            .iter()
            .map(|d| d.doc_key.clone())
            .collect::<Vec<_>>(),
        drifted
    );
    check_peak(peak_growth);
}

fn check_peak(growth: Option<f64>) {
    if let Some(growth) = growth {
        assert!(
            growth < PEAK_BOUND_MIB,
            "verify grew the peak RSS by {growth:.1} MiB (bound {PEAK_BOUND_MIB} MiB)"
        );
    }
}

/// Runs verify and prints its time and how much it grew the process's memory. Returns the
/// report and the growth of the peak RSS in MiB (`None` where the peak cannot be reset).
async fn measured_verify(
    index: &Index,
    kind: StoreKind,
    what: &str,
) -> (VerifyReport, Option<f64>) {
    // Linux resets the peak (VmHWM) to the current RSS on "5"; a sampler also follows the
    // anonymous memory (heap), which mapped store files do not count in.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_kib("VmRSS").unwrap_or(0);
    let anon_before = status_kib("RssAnon").unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(status_kib("RssAnon").unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    };
    let started = Instant::now();
    let report = index.verify().await.unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let anon_peak = sampler
        .join()
        .unwrap()
        .max(status_kib("RssAnon").unwrap_or(0));
    let hwm = status_kib("VmHWM").unwrap_or(0);

    eprintln!(
        "verify at scale ({kind:?}, {what}): {} rows, {} points in the store, verify took {took:.1?}",
        report.documents_checked, report.points_in_store
    );
    eprintln!(
        "verify at scale ({kind:?}, {what}): anonymous memory {:.1} MiB before, sampled peak +{:.1} MiB",
        mib(anon_before),
        mib(anon_peak.saturating_sub(anon_before))
    );
    let growth = reset.then(|| mib(hwm.saturating_sub(rss_before)));
    match growth {
        Some(growth) => eprintln!(
            "verify at scale ({kind:?}, {what}): RSS {:.1} MiB before, peak (VmHWM) {:.1} MiB: +{growth:.1} MiB during verify",
            mib(rss_before),
            mib(hwm)
        ),
        None => eprintln!(
            "verify at scale ({kind:?}, {what}): cannot write /proc/self/clear_refs to reset the peak RSS; the peak is not checked"
        ),
    }
    (report, growth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_deletes_orphans_on_every_page() {
    repair_orphans(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_deletes_orphans_on_every_page_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("repair deletes orphans on every page") {
        repair_orphans(kind).await;
    }
}

/// 3,000 orphans spread over several scroll pages among the real points: points of
/// documents no row knows, and points without a document in their payload.
async fn repair_orphans(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let all = points(&index).await;
    let dim = index.info.dim;
    let ghosts: Vec<Point> = (0..3_000)
        .map(|n| Point {
            id: uuid::Uuid::new_v4(),
            vector: vector(n, dim),
            sparse: None,
            payload: if n % 6 == 0 {
                Payload::new()
            } else {
                let serde_json::Value::Object(map) = serde_json::json!({
                    "source_id": "docs",
                    "doc_key": format!("ghost-{}.md", n / 3),
                    "chunk_index": n % 3,
                }) else {
                    unreachable!("json! object literal")
                };
                map
            },
        })
        .collect();
    for batch in ghosts.chunks(UPSERT_POINTS) {
        index.store.upsert(batch.to_vec()).await.unwrap();
    }

    let report = index.verify().await.unwrap();
    assert_eq!(report.orphan_points, 3_000, "{report:#?}");
    assert_eq!(
        report.orphan_ids.len(),
        1_000,
        "only the first ones are listed"
    );
    assert_eq!((report.missing_points, report.mismatched_points), (0, 0));
    assert_eq!(report.points_in_store, (all.len() + 3_000) as u64);

    let repaired = index.repair(&SyncOptions::default()).await.unwrap();
    assert_eq!(repaired.orphans_deleted, 3_000);
    assert_eq!(repaired.documents_reindexed, 0);
    assert!(repaired.after.is_clean(), "{:#?}", repaired.after);
    assert_eq!(points(&index).await, all, "repair deleted only the orphans");
}
