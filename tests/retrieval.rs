//! Retrieval on real parts: the sample corpus indexed with the real model into the real
//! embedded engine (and pgvector where available), scored with `freshet eval`'s code on
//! the judged set written for it (examples/sample-eval); the move of a dense-only index
//! to hybrid; query modes and filters through the CLI.

mod common;

use std::path::Path;
use std::process::Output;

use common::{repo_root, str_field, StoreKind, Workspace};
use freshet::eval::{evaluate, load_beir, DocIds, Ranking};
use freshet::index::QueryOptions;
use freshet::pipeline::SyncOptions;
use freshet::store::{QueryMode, SparseKind, StoreError};

async fn hybrid_is_not_worse_than_dense(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    assert!(
        index.info.sparse.is_some(),
        "{kind:?}: new indexes keep keywords"
    );
    let queries = load_beir(&repo_root().join("examples/sample-eval"), "test").unwrap();
    assert_eq!(queries.len(), 24);
    let scores = evaluate(
        &index,
        &queries,
        &QueryMode::ALL.map(|mode| Ranking {
            mode,
            rerank: false,
        }),
        &DocIds::default(),
        100,
    )
    .await
    .unwrap();
    eprintln!("{kind:?}\n{}", freshet::eval::table(&scores));
    let ndcg = |mode: &str| scores.iter().find(|s| s.mode == mode).unwrap().ndcg_at_10;
    for s in &scores {
        assert!(
            s.ndcg_at_10 > 0.5 && s.recall_at_100 > 0.5,
            "{kind:?}: {} retrieves almost nothing: {s:?}",
            s.mode
        );
    }
    assert!(
        ndcg("hybrid") >= ndcg("dense"),
        "{kind:?}: hybrid {} below dense {}",
        ndcg("hybrid"),
        ndcg("dense")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_is_not_worse_than_dense_on_the_sample_set() {
    hybrid_is_not_worse_than_dense(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_is_not_worse_than_dense_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("hybrid vs dense") {
        hybrid_is_not_worse_than_dense(kind).await;
    }
}

/// An index built before hybrid retrieval (dense only) keeps answering, refuses keyword
/// queries with a way out, and is replaced by a dense + BM25 collection that is published
/// only once complete; the old one is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dense_only_index_moves_to_hybrid_as_a_new_collection() {
    let ws = Workspace::with_sample_corpus();
    let mut dense_only = ws.config();
    dense_only.retrieval.sparse = false;
    {
        let index = ws.open_with(dense_only).await;
        index.sync(&SyncOptions::default()).await.unwrap();
        assert_eq!(index.info.sparse, None);
        assert_eq!(index.default_mode(), QueryMode::Dense);
        let err = index
            .query("sourdough", 3, Some(QueryMode::Hybrid), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, freshet::Error::Store(StoreError::Rejected(_)))
                && err.to_string().contains("sparse = true"),
            "{err}"
        );
    }
    let old = freshet::index::read_index_info(&ws.data())
        .unwrap()
        .unwrap();
    assert_eq!(old.sparse, None);

    let index = ws.open().await;
    assert_eq!(index.info.sparse, Some(SparseKind::Bm25));
    assert_ne!(index.info.collection, old.collection);
    assert!(
        !index.is_published(),
        "a half-built collection is not queried"
    );
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    assert_eq!(
        report.totals.added + report.totals.updated,
        6,
        "every document is indexed again: {report:#?}"
    );
    assert!(report.totals.chunks_embedded > 0, "{report:#?}");
    let published = freshet::index::read_index_info(&ws.data())
        .unwrap()
        .unwrap();
    assert_eq!(published, index.info);
    assert!(
        !ws.data().join("collections").join(&old.collection).exists(),
        "the dense-only collection was not dropped"
    );
    let hits = index.query("autolyse", 3, None, None).await.unwrap();
    assert_eq!(str_field(&hits[0].payload, "doc_key"), "sourdough.html");
}

fn freshet(cwd: &Path, args: &[&str]) -> Output {
    common::freshet_cli(cwd, args)
}

fn ok_json(output: &Output) -> serde_json::Value {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    common::stdout_json(output)
}

#[test]
fn query_modes_filters_and_eval_through_the_cli() {
    let ws = Workspace::with_sample_corpus();
    let cwd = ws.dir.path();
    ok_json(&freshet(cwd, &["sync", "corpus", "--json"]));

    // An exact identifier: the keyword side finds the code.
    let hits = ok_json(&freshet(
        cwd,
        &[
            "query",
            "retry_with_backoff",
            "--mode",
            "sparse",
            "-k",
            "1",
            "--json",
        ],
    ));
    assert_eq!(
        hits["hits"][0]["payload"]["doc_key"], "code/retry.py",
        "{hits}"
    );
    // A filter keeps every hit inside one document, in every mode.
    for mode in ["dense", "sparse", "hybrid"] {
        let hits = ok_json(&freshet(
            cwd,
            &[
                "query",
                "battery",
                "--mode",
                mode,
                "--filter",
                "doc_key=guides/japan-rail.md",
                "--json",
            ],
        ));
        let hits = hits["hits"].as_array().unwrap();
        assert!(
            hits.iter()
                .all(|h| h["payload"]["doc_key"] == "guides/japan-rail.md"),
            "{mode}: {hits:?}"
        );
    }
    let bad = freshet(cwd, &["query", "x", "--mode", "fuzzy"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("dense, sparse or hybrid"));
    let bad = freshet(cwd, &["query", "x", "--filter", "no-equals-sign"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));

    // eval --compare --json: every mode, the same judged queries.
    let eval_dir = repo_root().join("examples/sample-eval");
    let report = ok_json(&freshet(
        cwd,
        &["eval", eval_dir.to_str().unwrap(), "--compare", "--json"],
    ));
    let modes = report["modes"].as_array().unwrap();
    assert_eq!(
        modes
            .iter()
            .map(|m| m["mode"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["dense", "sparse", "hybrid"]
    );
    for m in modes {
        assert_eq!(m["queries"], 24);
        let ndcg = m["ndcg_at_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ndcg) && ndcg > 0.5, "{m}");
        assert!(m["latency_p95_ms"].as_f64().unwrap() > 0.0);
    }
    // A judged set whose ids are not doc keys, mapped through --doc-id-regex.
    let mapped = ws.dir.path().join("mapped");
    std::fs::create_dir_all(mapped.join("qrels")).unwrap();
    std::fs::write(
        mapped.join("queries.jsonl"),
        "{\"_id\": \"1\", \"text\": \"sourdough autolyse\"}\n",
    )
    .unwrap();
    std::fs::write(
        mapped.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\n1\tsourdough\t1\n",
    )
    .unwrap();
    let report = ok_json(&freshet(
        cwd,
        &[
            "eval",
            mapped.to_str().unwrap(),
            "--mode",
            "hybrid",
            "--doc-id-regex",
            r"^([^/.]+)\.html$",
            "--json",
        ],
    ));
    assert_eq!(report["modes"][0]["mrr_at_10"], 1.0, "{report}");
}

/// The cross-encoder (provisioned by `scripts/provision --rerank`) reorders the fused
/// top-N: only chunks retrieval returned, scored as probabilities, best first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reranking_reorders_the_fused_results_with_the_cross_encoder() {
    let ws = Workspace::with_sample_corpus();
    let mut config = ws.config();
    config.retrieval.rerank_model_dir = Some(freshet::rerank::default_rerank_dir());
    config.retrieval.rerank_top_n = 4;
    let index = ws.open_with(config).await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let question = "what temperature should the oven be for baking the loaf?";
    let no_rerank = QueryOptions {
        rerank: Some(false),
        ..QueryOptions::default()
    };
    let plain = index.query_with(question, 4, &no_rerank).await.unwrap();
    // Reranking is on by default once a reranker is configured.
    let reranked = index.query(question, 4, None, None).await.unwrap();
    assert_eq!(str_field(&reranked[0].payload, "doc_key"), "sourdough.html");
    let ids = |hits: &[freshet::store::Hit]| {
        let mut ids: Vec<_> = hits.iter().map(|h| h.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&reranked),
        ids(&plain),
        "reranking adds or drops chunks"
    );
    assert!(reranked.iter().all(|h| (0.0..=1.0).contains(&h.score)));
    assert!(reranked.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(
        reranked[0].score > 50.0 * reranked[1].score,
        "the cross-encoder separates the answer from unrelated chunks: {:?}",
        reranked.iter().map(|h| h.score).collect::<Vec<_>>()
    );
    // k beyond top-N: the reranked N first, then retrieval's order (the sample corpus
    // has 7 chunks).
    let deep = index.query(question, 7, None, None).await.unwrap();
    let plain_deep = index.query_with(question, 7, &no_rerank).await.unwrap();
    assert_eq!(deep.len(), 7);
    assert_eq!(ids(&deep[..4]), ids(&plain));
    assert_eq!(
        deep[4..].iter().map(|h| h.id).collect::<Vec<_>>(),
        plain_deep[4..].iter().map(|h| h.id).collect::<Vec<_>>()
    );

    // A missing reranker says how to get one.
    let mut config = ws.config();
    config.retrieval.rerank_model_dir = Some(ws.dir.path().join("no-such-model"));
    drop(index);
    let index = ws.open_with(config).await;
    let err = index.query(question, 3, None, None).await.unwrap_err();
    assert!(err.to_string().contains("rerank_model_dir"), "{err}");
}
