//! One conformance suite for the `VectorStore` and `Catalog` traits, run against every
//! store kind that is available: the embedded engine always, pgvector when
//! `FRESHET_TEST_PGVECTOR_URL` is set (scripts/test starts one), Qdrant when
//! `FRESHET_TEST_QDRANT_URL` is set. Real engines and servers only.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{StoreKind, PGVECTOR_URL_ENV};
use freshet::config::{Config, StoreConfig};
use freshet::sparse::Bm25Encoder;
use freshet::store::{
    Catalog, Filter, IndexInfo, Payload, Point, PointId, Query, QueryMode, StoreError, VectorStore,
};
use uuid::Uuid;

const DIM: usize = 8;

/// A deterministic unit-ish vector for point `i`.
fn vector(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| {
            (((i * 31 + d * 17) % 97) as f32 / 97.0) - 0.5 + if d == i % DIM { 1.0 } else { 0.0 }
        })
        .collect()
}

fn payload(i: usize, version: &str) -> Payload {
    let serde_json::Value::Object(map) = serde_json::json!({
        "source_id": if i.is_multiple_of(50) { "rare" } else if i.is_multiple_of(2) { "even" } else { "odd" },
        "doc_key": format!("doc-{}", i / 3),
        "chunk_hash": format!("hash-{i}"),
        "chunk_index": i % 3,
        "text": format!("chunk {i} ({version}) with a tab\tand a newline\nand a quote ' and \" and \\\\"),
        "tenant": if i.is_multiple_of(4) { "acme" } else { "globex" },
    }) else {
        unreachable!()
    };
    map
}

fn points(range: std::ops::Range<usize>, version: &str) -> Vec<Point> {
    range
        .map(|i| {
            let payload = payload(i, version);
            Point {
                id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("point-{i}").as_bytes()),
                vector: vector(i),
                sparse: Some(Bm25Encoder::new().document(payload["text"].as_str().unwrap())),
                payload,
            }
        })
        .collect()
}

fn config_with(store: StoreConfig, data_dir: &std::path::Path) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        store,
        ..Config::default()
    }
}

async fn catalog(config: &Config) -> Arc<dyn Catalog> {
    freshet::store::connect(config).await.unwrap()
}

fn info(catalog: &dyn Catalog, model: &str, dim: usize) -> IndexInfo {
    let sparse = Some(catalog.sparse_kind());
    IndexInfo {
        collection: catalog.collection_name(model, dim, sparse),
        model_id: model.into(),
        dim,
        sparse,
    }
}

async fn all_ids(store: &dyn VectorStore, page: usize, filter: Option<Filter>) -> Vec<PointId> {
    let mut ids = Vec::new();
    let mut offset = None;
    loop {
        let (points, next) = store
            .scroll(offset, page, filter.clone(), false)
            .await
            .unwrap();
        ids.extend(points.iter().map(|p| p.id));
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    ids
}

async fn conformance(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(kind.config(), dir.path());
    let cat = catalog(&config).await;
    let first = info(cat.as_ref(), "conformance-a", DIM);
    assert!(
        cat.published().await.unwrap().is_none(),
        "{kind:?}: nothing published yet"
    );
    let store = cat.open(&first).await.unwrap();
    store.ensure_collection(DIM).await.unwrap();

    // Upsert, then overwrite a third of the points: same ids, new payloads and vectors.
    let n = 300;
    store.upsert(points(0..n, "v1")).await.unwrap();
    assert_eq!(store.count(None).await.unwrap(), n, "{kind:?}");
    let mut rewritten = points(0..100, "v2");
    for p in &mut rewritten {
        p.vector = vector(p.vector.len() + 1000);
    }
    store.upsert(rewritten.clone()).await.unwrap();
    assert_eq!(
        store.count(None).await.unwrap(),
        n,
        "{kind:?}: an overwrite added points"
    );

    // Deletes: known ids go, unknown ids are ignored.
    let gone: Vec<PointId> = points(250..n, "v1").iter().map(|p| p.id).collect();
    let mut delete = gone.clone();
    delete.push(Uuid::new_v4());
    store.delete(delete).await.unwrap();
    store.delete(vec![Uuid::new_v4()]).await.unwrap();
    let live = 250;
    assert_eq!(store.count(None).await.unwrap(), live, "{kind:?}");

    // Durability: a new connection (a new process, as far as the store can tell) sees
    // exactly the acknowledged state.
    drop(store);
    drop(cat);
    let cat = catalog(&config).await;
    let store = cat
        .open_existing(&first)
        .await
        .unwrap()
        .expect("collection exists");
    assert_eq!(
        store.count(None).await.unwrap(),
        live,
        "{kind:?}: after reopening"
    );
    let (page, _) = store
        .scroll(Some(rewritten[7].id), 1, None, true)
        .await
        .unwrap();
    assert_eq!(page[0].id, rewritten[7].id);
    assert_eq!(
        page[0].payload, rewritten[7].payload,
        "{kind:?}: overwrite not durable"
    );
    let stored = page[0].vector.clone().expect("vector requested");
    let wanted = &rewritten[7].vector;
    assert!(
        stored.iter().zip(wanted).all(|(a, b)| (a - b).abs() < 1e-5)
            || common::cosine(&stored, wanted) > 0.9999,
        "{kind:?}: vector changed on the way: {stored:?} vs {wanted:?}"
    );

    // Scroll: id order, every point once, whatever the page size.
    for page in [1, 7, 64, 1000] {
        let ids = all_ids(store.as_ref(), page, None).await;
        assert_eq!(ids.len(), live, "{kind:?}: page {page}");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{kind:?}: page {page} not in id order"
        );
    }

    // Filters: equality on indexed fields and other payload fields, any-of, combined.
    let expected = |f: &dyn Fn(usize) -> bool| (0..live).filter(|i| f(*i)).count();
    let even = Filter::default().field("source_id", "even");
    assert_eq!(
        store.count(Some(even.clone())).await.unwrap(),
        expected(&|i| i % 2 == 0 && i % 50 != 0)
    );
    let acme_even = even.clone().field("tenant", "acme");
    assert_eq!(
        store.count(Some(acme_even.clone())).await.unwrap(),
        expected(&|i| i % 4 == 0 && i % 50 != 0),
        "{kind:?}: two conditions"
    );
    let hashes = Filter::default().any_of(
        "chunk_hash",
        vec![
            "hash-3".into(),
            "hash-4".into(),
            "hash-299".into(),
            "no-such".into(),
        ],
    );
    let found = all_ids(store.as_ref(), 2, Some(hashes.clone())).await;
    assert_eq!(found.len(), 2, "{kind:?}: any-of (hash-299 was deleted)");
    assert_eq!(store.count(Some(hashes)).await.unwrap(), 2);
    let doc = Filter::default().field("doc_key", "doc-10");
    assert_eq!(all_ids(store.as_ref(), 1, Some(doc)).await.len(), 3);

    // Search: the nearest point to its own vector is itself; a selective filter still
    // returns k rows whenever k rows match (pgvector filters after its HNSW scan).
    let hits = store
        .search(&Query::dense(&vector(200), 5, None))
        .await
        .unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].payload["chunk_hash"], "hash-200", "{kind:?}");
    assert!(
        (hits[0].score - 1.0).abs() < 1e-3,
        "{kind:?}: cosine score {}",
        hits[0].score
    );
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let rare = Filter::default().field("source_id", "rare");
    let rare_live = expected(&|i| i % 50 == 0);
    let hits = store
        .search(&Query::dense(&vector(1), 10, Some(rare.clone())))
        .await
        .unwrap();
    assert_eq!(
        hits.len(),
        rare_live.min(10),
        "{kind:?}: a selective filter came back short"
    );
    assert!(hits.iter().all(|h| h.payload["source_id"] == "rare"));
    let hits = store
        .search(&Query::dense(&vector(2), 3, Some(rare)))
        .await
        .unwrap();
    assert_eq!(hits.len(), 3, "{kind:?}");
    let everything = store
        .search(&Query::dense(&vector(3), live + 50, None))
        .await
        .unwrap();
    assert_eq!(everything.len(), live, "{kind:?}: k beyond the collection");

    // Dimension mismatch: named on both sides; a wrong-size vector is refused.
    let bad = Point {
        vector: vec![0.5; DIM + 2],
        ..points(0..1, "v3").remove(0)
    };
    assert!(
        store.upsert(vec![bad]).await.is_err(),
        "{kind:?}: wrong-size vector stored"
    );
    let err = store.ensure_collection(DIM + 1).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Mismatch { .. }),
        "{kind:?}: {err}"
    );
    assert!(
        text.contains(&DIM.to_string()) && text.contains(&(DIM + 1).to_string()),
        "{text}"
    );
    // (The embedded engine admits one opener of a collection at a time.)
    drop(store);
    let wrong = IndexInfo {
        dim: DIM + 1,
        ..first.clone()
    };
    let err = cat
        .open(&wrong)
        .await
        .err()
        .expect("opened with the wrong dimension");
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Mismatch { .. }),
        "{kind:?}: {text}"
    );
    assert!(
        text.contains(&format!("{DIM}-dimensional")) || text.contains(&format!("vector({DIM})")),
        "{kind:?}: {text}"
    );
    assert!(text.contains(&(DIM + 1).to_string()), "{kind:?}: {text}");

    // The published name: the first collection, then atomically the second; the first
    // is dropped with the switch.
    cat.publish(&first).await.unwrap();
    assert_eq!(cat.published().await.unwrap().as_ref(), Some(&first));
    let second = info(cat.as_ref(), "conformance-b", DIM);
    assert_ne!(second.collection, first.collection);
    let next = cat.open(&second).await.unwrap();
    next.upsert(points(0..10, "b")).await.unwrap();
    assert_eq!(
        cat.published().await.unwrap().as_ref(),
        Some(&first),
        "opening must not publish"
    );
    cat.publish(&second).await.unwrap();
    assert_eq!(cat.published().await.unwrap().as_ref(), Some(&second));
    assert!(
        cat.open_existing(&first).await.unwrap().is_none(),
        "{kind:?}: old collection kept"
    );
    assert_eq!(next.count(None).await.unwrap(), 10);
    // Publishing again is a no-op.
    cat.publish(&second).await.unwrap();
    assert_eq!(cat.published().await.unwrap().as_ref(), Some(&second));
}

/// A point whose payload text is `text`, with its BM25 weights.
fn text_point(i: usize, source: &str, text: &str) -> Point {
    let serde_json::Value::Object(payload) = serde_json::json!({
        "source_id": source,
        "doc_key": format!("doc-{i}"),
        "chunk_hash": format!("hash-{i}"),
        "text": text,
    }) else {
        unreachable!()
    };
    Point {
        id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("text-{i}").as_bytes()),
        vector: vector(i),
        sparse: Some(Bm25Encoder::new().document(text)),
        payload,
    }
}

fn keyword_query(mode: QueryMode, text: &str, dense: Vec<f32>, k: usize) -> Query {
    Query {
        mode,
        dense,
        sparse: Some(Bm25Encoder::new().query(text)),
        text: text.to_string(),
        k,
        candidates: 20,
        rrf_k: 60,
        filter: None,
    }
}

fn keys(hits: &[freshet::store::Hit]) -> Vec<String> {
    hits.iter()
        .map(|h| h.payload["doc_key"].as_str().unwrap().to_string())
        .collect()
}

/// The keyword side: term matches rank, rare terms outrank common ones, hybrid fuses
/// both rankings, filters hold in every mode, overwrites and deletes reach the keyword
/// index, and a dense-only collection refuses keyword queries with a way out.
async fn keyword_conformance(kind: StoreKind) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(kind.config(), dir.path());
    let cat = catalog(&config).await;
    let keywords = info(cat.as_ref(), "keywords", DIM);
    let store = cat.open(&keywords).await.unwrap();
    let mut points: Vec<Point> = (0..30)
        .map(|i| {
            text_point(
                i,
                "docs",
                &format!("weekly report number {i} about nothing in particular"),
            )
        })
        .collect();
    points.push(text_point(
        30,
        "docs",
        "the zeppelin report: an airship over the harbour",
    ));
    points.push(text_point(
        31,
        "docs",
        "flux capacitor wiring needs 1.21 gigawatts",
    ));
    points.push(text_point(
        32,
        "other",
        "zeppelin hangar doors, second source",
    ));
    store.upsert(points).await.unwrap();

    let hits = store
        .search(&keyword_query(
            QueryMode::Sparse,
            "flux capacitor",
            Vec::new(),
            5,
        ))
        .await
        .unwrap();
    assert_eq!(keys(&hits), ["doc-31"], "{kind:?}: only the matching chunk");
    let hits = store
        .search(&keyword_query(
            QueryMode::Sparse,
            "zeppelin report",
            Vec::new(),
            3,
        ))
        .await
        .unwrap();
    assert_eq!(
        keys(&hits)[0],
        "doc-30",
        "{kind:?}: both terms, one rare: {:?}",
        keys(&hits)
    );
    assert_eq!(hits.len(), 3);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // Filters hold in keyword mode.
    let mut only_other = keyword_query(QueryMode::Sparse, "zeppelin", Vec::new(), 5);
    only_other.filter = Some(Filter::default().field("source_id", "other"));
    assert_eq!(
        keys(&store.search(&only_other).await.unwrap()),
        ["doc-32"],
        "{kind:?}"
    );

    // Hybrid: the dense side's best (point 7's own vector) and the keyword side's best
    // (the capacitor) both come first, ahead of chunks only one side ranks low.
    let hybrid = keyword_query(QueryMode::Hybrid, "capacitor", vector(7), 2);
    let hits = store.search(&hybrid).await.unwrap();
    let mut top: Vec<String> = keys(&hits);
    top.sort();
    assert_eq!(top, ["doc-31", "doc-7"], "{kind:?}");
    let mut filtered = keyword_query(QueryMode::Hybrid, "capacitor", vector(7), 5);
    filtered.filter = Some(Filter::default().field("source_id", "other"));
    assert_eq!(
        keys(&store.search(&filtered).await.unwrap()),
        ["doc-32"],
        "{kind:?}: hybrid filter"
    );

    // An overwrite replaces the terms; a delete removes them.
    store
        .upsert(vec![text_point(31, "docs", "plain wiring notes")])
        .await
        .unwrap();
    let hits = store
        .search(&keyword_query(
            QueryMode::Sparse,
            "capacitor",
            Vec::new(),
            5,
        ))
        .await
        .unwrap();
    assert!(
        hits.is_empty(),
        "{kind:?}: old terms still match: {:?}",
        keys(&hits)
    );
    store
        .delete(vec![text_point(30, "docs", "").id])
        .await
        .unwrap();
    let hits = store
        .search(&keyword_query(QueryMode::Sparse, "airship", Vec::new(), 5))
        .await
        .unwrap();
    assert!(hits.is_empty(), "{kind:?}: a deleted chunk still matches");
    // A query of stopwords only matches nothing (and is no error).
    let hits = store
        .search(&keyword_query(
            QueryMode::Sparse,
            "the of and",
            Vec::new(),
            5,
        ))
        .await
        .unwrap();
    assert!(hits.is_empty(), "{kind:?}");
    drop(store);

    // A dense-only collection (as built before hybrid retrieval) answers dense queries
    // and refuses keyword ones, saying what to do.
    let dense_only = IndexInfo {
        collection: cat.collection_name("dense-only", DIM, None),
        model_id: "dense-only".into(),
        dim: DIM,
        sparse: None,
    };
    assert_ne!(
        dense_only.collection,
        cat.collection_name("dense-only", DIM, Some(cat.sparse_kind()))
    );
    let store = cat.open(&dense_only).await.unwrap();
    let mut point = text_point(1, "docs", "flux capacitor");
    point.sparse = None;
    store.upsert(vec![point]).await.unwrap();
    assert_eq!(
        store
            .search(&Query::dense(&vector(1), 1, None))
            .await
            .unwrap()
            .len(),
        1
    );
    let err = store
        .search(&keyword_query(QueryMode::Hybrid, "flux", vector(1), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Rejected(_)) && err.to_string().contains("--mode dense"),
        "{kind:?}: {err}"
    );
    drop(store);
    // The same collection opened as keyword-keeping is a mismatch, never a silent mix.
    let wrong = IndexInfo {
        sparse: Some(cat.sparse_kind()),
        ..dense_only.clone()
    };
    let err = cat
        .open(&wrong)
        .await
        .err()
        .expect("opened a dense-only collection as hybrid");
    assert!(
        matches!(err, StoreError::Mismatch { .. }),
        "{kind:?}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_keywords() {
    keyword_conformance(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_keeps_keywords() {
    if let Some(kind) = StoreKind::pgvector("keyword conformance") {
        keyword_conformance(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_keeps_keywords() {
    if let Some(kind) = StoreKind::qdrant("keyword conformance") {
        keyword_conformance(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_conforms() {
    conformance(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_conforms() {
    if let Some(kind) = StoreKind::pgvector("store conformance") {
        conformance(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_conforms() {
    if let Some(kind) = StoreKind::qdrant("store conformance") {
        conformance(kind).await;
    }
}

/// A connection of the test's own to the pgvector database.
async fn pg() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&std::env::var(PGVECTOR_URL_ENV).unwrap())
        .await
        .unwrap()
}

/// freshet never writes to, publishes over or drops a relation it did not create, and
/// top-k queries use the HNSW index (a mismatched operator would scan silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_leaves_foreign_tables_alone_and_uses_its_index() {
    let Some(kind) = StoreKind::pgvector("foreign tables and query plans") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let StoreConfig::Pgvector(mut settings) = kind.config() else {
        unreachable!()
    };
    let db = pg().await;
    // Someone's own table under the name freshet was told to publish as.
    sqlx::query(&format!(
        "CREATE TABLE public.{} (id int PRIMARY KEY, note text)",
        settings.table
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO public.{} VALUES (1, 'mine')",
        settings.table
    ))
    .execute(&db)
    .await
    .unwrap();
    let config = config_with(StoreConfig::Pgvector(settings.clone()), dir.path());
    let cat = catalog(&config).await;
    let err = cat.published().await.unwrap_err();
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
    let mine = info(cat.as_ref(), "conformance-a", DIM);
    let err = cat
        .open(&mine)
        .await
        .err()
        .expect("opened beside a foreign table");
    assert!(err.to_string().contains("did not create"), "{err}");
    let still: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM public.{}", settings.table))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(still, 1);

    // A foreign table under the physical name freshet would use: refused too.
    settings.table = common::unique_name();
    let config = config_with(StoreConfig::Pgvector(settings.clone()), dir.path());
    let cat = catalog(&config).await;
    let theirs = info(cat.as_ref(), "conformance-a", DIM);
    sqlx::query(&format!(
        "CREATE TABLE public.{} (id uuid PRIMARY KEY, embedding vector({DIM}), payload jsonb)",
        theirs.collection
    ))
    .execute(&db)
    .await
    .unwrap();
    let err = cat
        .open(&theirs)
        .await
        .err()
        .expect("wrote into a foreign table");
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");

    // Query plans: the top-k statement applications and freshet run uses the HNSW index.
    settings.table = common::unique_name();
    let config = config_with(StoreConfig::Pgvector(settings.clone()), dir.path());
    let cat = catalog(&config).await;
    let ours = info(cat.as_ref(), "conformance-a", DIM);
    let store = cat.open(&ours).await.unwrap();
    store.upsert(points(0..200, "v1")).await.unwrap();
    cat.publish(&ours).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let probe = format!("'{:?}'", vector(5)).replace(' ', "");
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN SELECT id FROM public.{} ORDER BY embedding <=> {probe}::vector LIMIT 10",
        settings.table
    ))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains(&format!("{}_hnsw", ours.collection)),
        "the view's top-k query does not use the HNSW index:\n{plan}"
    );
    tx.rollback().await.unwrap();

    // The view exposes what applications need, with freshet's comment on it.
    let columns: BTreeSet<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
    )
    .bind(&settings.table)
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for column in [
        "id",
        "embedding",
        "payload",
        "source_id",
        "doc_key",
        "chunk_hash",
    ] {
        assert!(
            columns.contains(column),
            "{column} missing from the view: {columns:?}"
        );
    }
}

/// freshet never aliases over, writes to or drops a Qdrant collection it did not create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_leaves_foreign_collections_alone() {
    let Some(kind) = StoreKind::qdrant("foreign collections") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let StoreConfig::Qdrant(mut settings) = kind.config() else {
        unreachable!()
    };
    // Someone's own collection under freshet's physical name, without the marker.
    let probe = config_with(StoreConfig::Qdrant(settings.clone()), dir.path());
    let cat = catalog(&probe).await;
    let theirs = info(cat.as_ref(), "conformance-a", DIM);
    let client = qdrant_client::Qdrant::from_url(&std::env::var(common::QDRANT_URL_ENV).unwrap())
        .api_key(std::env::var(common::QDRANT_KEY_ENV).ok())
        .skip_compatibility_check()
        .build()
        .unwrap();
    client
        .create_collection(
            qdrant_client::qdrant::CreateCollectionBuilder::new(theirs.collection.clone())
                .vectors_config(qdrant_client::qdrant::VectorParamsBuilder::new(
                    DIM as u64,
                    qdrant_client::qdrant::Distance::Cosine,
                )),
        )
        .await
        .unwrap();
    let err = cat
        .open(&theirs)
        .await
        .err()
        .expect("wrote into a foreign collection");
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");

    // A collection under the alias's own name is not replaced by an alias.
    settings.collection = theirs.collection.clone();
    let config = config_with(StoreConfig::Qdrant(settings), dir.path());
    let cat = catalog(&config).await;
    let err = cat.published().await.unwrap_err();
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
}
