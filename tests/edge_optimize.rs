//! The embedded engine is optimised on a copy that then takes the shard's place: stopped
//! after any step, as a kill -9 would stop it, the next open finds one complete shard,
//! every point exactly once, and writable. (qdrant-edge itself writes an optimised
//! segment before deleting the ones it replaces and does not deduplicate on load.)

use std::collections::BTreeSet;
use std::path::Path;

use freshet::store::{EdgeStore, Filter, OptimizeStep, Point, PointId, Query, VectorStore};

const DIM: usize = 16;
const POINTS: usize = 3_000;
/// Deleted before optimising: a third of the segment, past the engine's vacuum threshold
/// (20% of at least 1,000 vectors), so the engine rewrites the segment.
const DELETED: usize = 1_000;

fn vector(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| (((i * 31 + d * 17) % 97) as f32 / 97.0) - 0.5)
        .collect()
}

fn point(i: usize) -> Point {
    let mut payload = serde_json::Map::new();
    payload.insert("doc_key".into(), format!("doc-{i}").into());
    payload.insert("text".into(), format!("point number {i}").into());
    Point {
        id: PointId::from_u128(i as u128 + 1),
        vector: vector(i),
        sparse: Some(freshet::store::SparseVector {
            indices: vec![i as u32 % 50, 1_000 + i as u32 % 7],
            values: vec![1.0, 0.5],
        }),
        payload,
    }
}

/// A shard whose one segment holds `POINTS` points, `DELETED` of them deleted.
async fn populated(path: &Path) -> EdgeStore {
    let store = EdgeStore::open(path, DIM, true).await.unwrap();
    for start in (0..POINTS).step_by(500) {
        store
            .upsert((start..start + 500).map(point).collect())
            .await
            .unwrap();
    }
    store
        .delete(
            (0..DELETED)
                .map(|i| PointId::from_u128(i as u128 + 1))
                .collect(),
        )
        .await
        .unwrap();
    store
}

fn expected() -> BTreeSet<PointId> {
    (DELETED..POINTS)
        .map(|i| PointId::from_u128(i as u128 + 1))
        .collect()
}

/// Every point the store holds, checked to appear once; and the exact count, which an
/// edge shard sums over segments (a duplicate shows there).
async fn ids_once(store: &EdgeStore) -> BTreeSet<PointId> {
    let mut seen = BTreeSet::new();
    let mut offset = None;
    loop {
        let (page, next) = store.scroll(offset, 700, None, false).await.unwrap();
        for p in page {
            assert!(seen.insert(p.id), "point {} listed twice", p.id);
        }
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    assert_eq!(store.count(None).await.unwrap(), seen.len(), "exact count");
    seen
}

async fn finds(store: &EdgeStore, i: usize) {
    let filter = Filter::default().field("doc_key", &format!("doc-{i}"));
    let query = Query::dense(&vector(i), 1, Some(filter));
    let hits = store.search(&query).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, PointId::from_u128(i as u128 + 1));
}

fn siblings(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "collection")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimising_rewrites_the_shard_and_keeps_every_point_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collection");
    let store = populated(&path).await;
    assert_eq!(ids_once(&store).await, expected());
    assert!(
        store.optimize().await.unwrap(),
        "the vacuum rewrote the segment"
    );
    assert_eq!(ids_once(&store).await, expected());
    finds(&store, 2_500).await;
    assert!(
        siblings(dir.path()).is_empty(),
        "{:?}",
        siblings(dir.path())
    );
    // Writes go to the optimised shard, and survive reopening.
    store.upsert(vec![point(0)]).await.unwrap();
    drop(store);
    let store = EdgeStore::open(&path, DIM, true).await.unwrap();
    let mut want = expected();
    want.insert(PointId::from_u128(1));
    assert_eq!(ids_once(&store).await, want);
    finds(&store, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimisation_stopped_after_any_step_leaves_one_whole_shard() {
    for step in [
        OptimizeStep::Copied,
        OptimizeStep::Optimized,
        OptimizeStep::Marked,
        OptimizeStep::Retired,
        OptimizeStep::Switched,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collection");
        let store = populated(&path).await;
        let stopped = store.optimize_stopping(move |at| at == step).await;
        assert!(stopped.is_err(), "{step:?}");
        // Like a process that died there: no write may follow on the moved shard.
        assert!(
            store.upsert(vec![point(0)]).await.is_err(),
            "{step:?}: a write after a stopped optimisation"
        );
        drop(store);

        let store = EdgeStore::open(&path, DIM, true).await.unwrap();
        assert_eq!(ids_once(&store).await, expected(), "{step:?}");
        finds(&store, 1_234).await;
        assert!(
            siblings(dir.path()).is_empty(),
            "{step:?}: left {:?}",
            siblings(dir.path())
        );
        store.upsert(vec![point(0)]).await.unwrap();
        assert!(store.optimize().await.is_ok(), "{step:?}");
        assert_eq!(
            ids_once(&store).await.len(),
            expected().len() + 1,
            "{step:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_indexes_a_large_brute_force_segment_once() {
    const WIDE: usize = 128;
    // Past both thresholds: 20,000 points, and 20,000 x 128 x 4 bytes > 10,000 KB.
    const MANY: usize = freshet::store::OPTIMIZE_AFTER_UNINDEXED;
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(&dir.path().join("collection"), WIDE, true)
        .await
        .unwrap();
    let wide = |i: usize| -> Vec<f32> {
        (0..WIDE)
            .map(|d| ((i.wrapping_mul(2_654_435_761) >> (d % 24)) % 1_000) as f32 / 1_000.0 - 0.5)
            .collect()
    };
    for start in (0..MANY - 1).step_by(1_000) {
        let batch = (start..(start + 1_000).min(MANY - 1))
            .map(|i| Point {
                vector: wide(i),
                ..point(i)
            })
            .collect();
        store.upsert(batch).await.unwrap();
    }
    assert_eq!(store.unindexed().await.unwrap(), (MANY - 1, MANY - 1));
    assert_eq!(store.maintain().await.unwrap(), None, "one point short");

    store
        .upsert(vec![Point {
            vector: wide(MANY - 1),
            ..point(MANY - 1)
        }])
        .await
        .unwrap();
    let done = store.maintain().await.unwrap().expect("past the threshold");
    assert!(done.contains("20000 of 20000 points"), "{done}");
    let (points, unindexed) = store.unindexed().await.unwrap();
    assert_eq!((points, unindexed), (MANY, 0), "{done}");
    assert_eq!(ids_once(&store).await.len(), MANY);
    let hits = store
        .search(&Query::dense(&wide(4_321), 1, None))
        .await
        .unwrap();
    assert_eq!(
        hits[0].id,
        PointId::from_u128(4_322),
        "found through the HNSW index"
    );
    assert_eq!(
        store.maintain().await.unwrap(),
        None,
        "nothing left to index"
    );
}
