//! Work proportional to what changed: chunk-level vector reuse, renames without
//! re-embedding, settings changes that re-index exactly what they affect, and a model
//! change that switches collections only when the new one is complete.

mod common;

use std::collections::HashSet;

use common::{doc_points, points, str_field, StoreKind, Workspace};
use freshet::config::{FolderConfig, SourceConfig};
use freshet::index::read_index_info;
use freshet::pipeline::SyncOptions;

fn long_document() -> String {
    let mut text = String::from("# Field guide\n\n");
    let topics = [
        "Herons stand still in shallow water and strike at fish with their long necks.",
        "Oak trees can live for several hundred years and feed hundreds of insect species.",
        "Glaciers carve U-shaped valleys as they slowly grind downhill under their own weight.",
        "Coral reefs are built by colonies of tiny animals that secrete calcium carbonate.",
        "Bats find their prey in the dark by listening to the echoes of their own calls.",
        "Sand dunes migrate downwind as grains hop over the crest and slide down the lee side.",
        "Mushrooms are the fruiting bodies of fungi whose threads spread through the soil.",
        "Tides rise and fall twice a day because of the pull of the moon and the sun.",
    ];
    for (i, topic) in topics.iter().enumerate() {
        text.push_str(&format!("## Section {i}\n\n"));
        for _ in 0..3 {
            text.push_str(topic);
            text.push(' ');
        }
        text.push_str("\n\n");
    }
    text
}

fn small_chunks(ws: &Workspace) -> freshet::Config {
    let mut config = ws.config();
    config.chunking.max_tokens = 64;
    config.chunking.overlap_tokens = 0;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_one_paragraph_re_embeds_only_the_changed_chunks() {
    edit_one_paragraph(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_one_paragraph_re_embeds_only_the_changed_chunks_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("chunk-level reuse") {
        edit_one_paragraph(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_one_paragraph_re_embeds_only_the_changed_chunks_on_qdrant() {
    if let Some(kind) = StoreKind::qdrant("chunk-level reuse") {
        edit_one_paragraph(kind).await;
    }
}

async fn edit_one_paragraph(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let path = ws.corpus().join("field-guide.md");
    let original = long_document();
    std::fs::write(&path, &original).unwrap();
    let index = ws.open_with(small_chunks(&ws)).await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let before = index
        .ledger
        .get("docs", "field-guide.md")
        .await
        .unwrap()
        .unwrap();
    assert!(
        before.chunk_hashes.len() >= 6,
        "{} chunks",
        before.chunk_hashes.len()
    );

    let edited = original.replace(
        "Bats find their prey in the dark",
        "Bats locate moths in complete darkness",
    );
    std::fs::write(&path, edited).unwrap();
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    let after = index
        .ledger
        .get("docs", "field-guide.md")
        .await
        .unwrap()
        .unwrap();
    let old: HashSet<&String> = before.chunk_hashes.iter().collect();
    let changed = after
        .chunk_hashes
        .iter()
        .filter(|h| !old.contains(h))
        .count();
    assert!(
        changed >= 1 && changed < after.chunk_hashes.len(),
        "{changed} changed"
    );
    assert_eq!(report.totals.updated, 1, "{report:#?}");
    assert_eq!(
        report.totals.chunks_embedded as usize, changed,
        "{report:#?}"
    );
    assert_eq!(
        report.totals.chunks_reused as usize,
        after.chunk_hashes.len() - changed
    );
    let hits = index
        .query("bats hunting moths in darkness", 1, None, None)
        .await
        .unwrap();
    assert!(str_field(&hits[0].payload, "text").contains("Bats locate moths"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_or_moved_file_is_re_keyed_without_re_embedding() {
    rename_and_move(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_or_moved_file_is_re_keyed_without_re_embedding_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("rename without re-embedding") {
        rename_and_move(kind).await;
    }
}

async fn rename_and_move(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let old_points = doc_points(&points(&index).await, "guides/japan-rail.md").len();

    std::fs::create_dir_all(ws.corpus().join("travel")).unwrap();
    std::fs::rename(
        ws.corpus().join("guides/japan-rail.md"),
        ws.corpus().join("travel/rail-in-japan.md"),
    )
    .unwrap();
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.totals.chunks_embedded, 0, "{report:#?}");
    assert_eq!(report.totals.chunks_reused as usize, old_points);
    assert_eq!((report.totals.added, report.totals.deleted), (1, 1));
    let all = points(&index).await;
    assert!(doc_points(&all, "guides/japan-rail.md").is_empty());
    assert_eq!(
        doc_points(&all, "travel/rail-in-japan.md").len(),
        old_points
    );
    assert!(index.verify().await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_chunk_size_re_indexes_every_document_once() {
    let ws = Workspace::with_sample_corpus();
    ws.sync().await;
    let mut config = ws.config();
    config.chunking.max_tokens = 64;
    config.chunking.overlap_tokens = 8;
    let index = ws.open_with(config.clone()).await;
    let changed = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(changed.totals.updated, 6, "{changed:#?}");
    assert_eq!(changed.totals.unchanged, 0);
    let again = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(again.totals.unchanged, 6, "{again:#?}");
    assert_eq!(
        again.totals.chunks_embedded + again.totals.points_upserted,
        0
    );
    assert!(index.verify().await.unwrap().is_clean());
    for payload in points(&index).await.values() {
        assert!(str_field(payload, "fingerprint").contains("max_tokens=64"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_gets_its_own_collection_published_only_when_complete() {
    model_switch(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_gets_its_own_collection_published_only_when_complete_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("model switch through the view") {
        model_switch(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_gets_its_own_collection_published_only_when_complete_on_qdrant() {
    if let Some(kind) = StoreKind::qdrant("model switch through the alias") {
        model_switch(kind).await;
    }
}

async fn model_switch(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let old = {
        let index = ws.open().await;
        index.sync(&SyncOptions::default()).await.unwrap();
        index.catalog.published().await.unwrap().unwrap()
    };
    if kind == StoreKind::Embedded {
        assert_eq!(read_index_info(&ws.data()).unwrap().unwrap(), old);
    }

    // "Another model": same files under another id, so a new vector space as far as the
    // index can tell. The first attempt has a source that fails: no switch.
    let mut config = ws.config();
    config.embedding.model_id = Some("minilm-retrained".into());
    config.sources.push(SourceConfig::Folder(FolderConfig {
        id: "missing".into(),
        path: ws.dir.path().join("no-such-folder"),
        include: vec![],
        exclude: vec![],
        respect_gitignore: true,
        include_hidden: false,
        partitions: 1,
    }));
    let index = ws.open_with(config.clone()).await;
    let partial = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(partial.status, "failed");
    assert_eq!(partial.sources[0].updated, 6, "{partial:#?}");
    assert_eq!(
        index.catalog.published().await.unwrap().unwrap(),
        old,
        "switched to a half-built collection"
    );
    assert!(index.catalog.open_existing(&old).await.unwrap().is_some());
    // Applications still get answers from the old model's collection.
    {
        let served = index.catalog.open_existing(&old).await.unwrap().unwrap();
        assert!(served.count(None).await.unwrap() > 0);
    }
    drop(index);

    config.sources.pop();
    let index = ws.open_with(config).await;
    let complete = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(complete.status, "completed", "{complete:#?}");
    let new = index.catalog.published().await.unwrap().unwrap();
    assert_eq!(
        new.collection,
        index
            .catalog
            .collection_name("minilm-retrained", 384, index.info.sparse)
    );
    assert_eq!(new.model_id, "minilm-retrained");
    assert!(
        index.catalog.open_existing(&old).await.unwrap().is_none(),
        "old collection kept"
    );
    if kind == StoreKind::Embedded {
        assert_eq!(new.collection, "minilm-retrained-384-bm25");
        assert!(!ws.data().join("collections").join(&old.collection).exists());
    }
    assert!(index.verify().await.unwrap().is_clean());
    let hits = index
        .query("sourdough bread proofing", 1, None, None)
        .await
        .unwrap();
    assert_eq!(str_field(&hits[0].payload, "doc_key"), "sourdough.html");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_build_is_queryable_as_it_fills_and_reported_partial() {
    first_build_partial(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_build_is_queryable_as_it_fills_and_reported_partial_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("first build queryable as it fills") {
        first_build_partial(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_build_is_queryable_as_it_fills_and_reported_partial_on_qdrant() {
    if let Some(kind) = StoreKind::qdrant("first build queryable as it fills") {
        first_build_partial(kind).await;
    }
}

/// A first sync that dies part-way leaves what it committed queryable (there is nothing
/// older to protect), and the index is reported partial until a sync completes.
async fn first_build_partial(kind: StoreKind) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let ws = Workspace::with_sample_corpus_on(kind);
    let mut config = ws.config();
    // One document per batch, so the crash after the second commit leaves some indexed.
    config.pipeline.commit_batch_chunks = 1;
    let index = ws.open_with(config.clone()).await;
    let commits = Arc::new(AtomicUsize::new(0));
    let seen = commits.clone();
    let options = SyncOptions {
        fault: Some(freshet::pipeline::FaultHook(Arc::new(move |step| {
            step == freshet::pipeline::CommitStep::AfterCommit
                && seen.fetch_add(1, Ordering::SeqCst) == 1
        }))),
        ..SyncOptions::default()
    };
    let crashed = index.sync(&options).await;
    assert!(
        matches!(crashed, Err(freshet::Error::Injected(_))),
        "{crashed:?}"
    );
    drop(index);

    let reader = freshet::Index::open_for_query(config.clone())
        .await
        .unwrap();
    let indexed = reader.store.count(None).await.unwrap();
    assert!(
        indexed > 0,
        "nothing queryable after an interrupted first build"
    );
    let hits = reader
        .query("anything at all", 3, None, None)
        .await
        .unwrap();
    assert!(!hits.is_empty());
    assert!(
        reader
            .ledger
            .collection_completed_at(&reader.info.collection)
            .await
            .unwrap()
            .is_none(),
        "an interrupted first build must be reported partial"
    );
    drop(reader);

    let index = ws.open_with(config).await;
    index.sync(&SyncOptions::default()).await.unwrap();
    assert!(index
        .ledger
        .collection_completed_at(&index.info.collection)
        .await
        .unwrap()
        .is_some());
    assert!(index.store.count(None).await.unwrap() > indexed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_collection_is_filled_again_not_trusted() {
    lost_collection(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_collection_is_filled_again_not_trusted_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("a dropped table is refilled") {
        lost_collection(kind).await;
    }
}

/// A collection recreated empty (a new or restored server, a dropped table) while the
/// ledger still records points in it: the next sync indexes every document again.
async fn lost_collection(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let (before, info) = {
        let index = ws.open().await;
        index.sync(&SyncOptions::default()).await.unwrap();
        (points(&index).await, index.info.clone())
    };
    match &ws.store {
        freshet::config::StoreConfig::Pgvector(p) => {
            let pool = sqlx::PgPool::connect(&std::env::var(common::PGVECTOR_URL_ENV).unwrap())
                .await
                .unwrap();
            sqlx::query(&format!("DROP VIEW public.\"{}\"", p.table))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(&format!("DROP TABLE public.\"{}\"", info.collection))
                .execute(&pool)
                .await
                .unwrap();
        }
        _ => {
            std::fs::remove_dir_all(ws.data().join("collections")).unwrap();
            std::fs::remove_file(ws.data().join("index.json")).unwrap();
        }
    }
    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.totals.updated, 6, "{report:#?}");
    assert!(index.verify().await.unwrap().is_clean());
    assert_eq!(points(&index).await, before);
}
