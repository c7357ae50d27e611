//! `embedding.provider = "openai"` against a real OpenAI-compatible server on loopback
//! that serves the same ONNX model through ONNX Runtime (tests/support/embed_server.rs):
//! its vectors agree with the local embedder's, a sync and a query go through it, a model
//! switch publishes only when complete, and each injected fault ends with the run's
//! outcome and the ledger and store as they must be.

mod common;
#[path = "support/embed_server.rs"]
mod embed_server;

use std::time::{Duration, Instant};

use common::Workspace;
use embed_server::{EmbedServer, Fault};
use freshet::config::{Config, EmbeddingConfig, ProviderKind};
use freshet::embed::{locate, EmbedError, Embedder, FastEmbedder, OpenAiEmbedder};
use freshet::pipeline::{RunReport, SyncOptions};

async fn server() -> EmbedServer {
    let model_dir = locate::model_dir(None).expect("run scripts/provision");
    EmbedServer::start(&model_dir, None).await
}

fn service_embedding(server: &EmbedServer) -> EmbeddingConfig {
    let model_dir = locate::model_dir(None).unwrap();
    EmbeddingConfig {
        provider: ProviderKind::Openai,
        url: Some(server.url()),
        model: Some("minilm".into()),
        tokenizer: Some(model_dir.join("tokenizer.json").display().to_string()),
        max_input_tokens: Some(510),
        max_batch_texts: 16,
        max_concurrency: 2,
        max_retries: 3,
        timeout_s: 5.0,
        ..EmbeddingConfig::default()
    }
}

fn service_config(ws: &Workspace, server: &EmbedServer) -> Config {
    Config {
        embedding: service_embedding(server),
        ..ws.config()
    }
}

/// Texts of every length the pipeline sends: short titles up to a chunk's worth.
fn sample_texts() -> Vec<String> {
    let mut texts = vec![
        "refund policy".to_string(),
        "How do I return an item I bought online?".to_string(),
    ];
    for entry in std::fs::read_dir(common::repo_root().join("examples/sample-docs")).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let words: Vec<&str> = text.split_whitespace().collect();
            texts.push(words.iter().take(40).copied().collect::<Vec<_>>().join(" "));
            texts.push(
                words
                    .iter()
                    .take(180)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    texts
}

/// After a failed run, the next one, with the service healthy, indexes the whole corpus.
async fn a_clean_run_indexes_everything(ws: &Workspace, config: Config) {
    let (report, points, documents) = run(ws, config).await;
    assert_eq!(report.status, "completed", "{report:?}");
    assert_eq!(documents, 6);
    assert_eq!(points as u64, report.totals.chunks_embedded);
}

async fn run(ws: &Workspace, config: Config) -> (RunReport, usize, u64) {
    let index = ws.open_with(config).await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    let points = common::points(&index).await.len();
    let documents = index.ledger.document_count("docs", None).await.unwrap() as u64;
    (report, points, documents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vectors_agree_with_the_local_model() {
    let server = server().await;
    let texts = sample_texts();
    let count = texts.len();
    let config = service_embedding(&server);
    let (local, remote) = tokio::task::spawn_blocking(move || {
        let local = FastEmbedder::load(&EmbeddingConfig::default()).unwrap();
        let remote = OpenAiEmbedder::connect(&config).unwrap();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        (local.embed(&refs).unwrap(), remote.embed(&refs).unwrap())
    })
    .await
    .unwrap();
    assert!(server.texts() > count, "the texts went through the server");
    assert_eq!(local.len(), remote.len());
    let worst = local
        .iter()
        .zip(&remote)
        .map(|(a, b)| common::cosine(a, b))
        .fold(f32::INFINITY, f32::min);
    println!("{count} texts, lowest cosine local vs service: {worst:.5}");
    assert!(worst >= 0.999, "lowest cosine {worst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_query_through_the_service() {
    let server = server().await;
    let ws = Workspace::with_sample_corpus();
    let index = ws.open_with(service_config(&ws, &server)).await;
    assert_eq!(index.info.model_id, "openai/minilm");
    assert_eq!(index.info.dim, 384);
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:?}");
    assert_eq!(report.totals.added, 6);
    let points = common::points(&index).await;
    assert_eq!(points.len() as u64, report.totals.chunks_embedded);
    let before = server.texts();
    let hits = index
        .query("refund for a returned item", 3, None, None)
        .await
        .unwrap();
    assert_eq!(
        server.texts(),
        before + 1,
        "the query embedded through the service"
    );
    assert!(!hits.is_empty());
    let top = common::str_field(&hits[0].payload, "doc_key");
    assert!(top.contains("returns-policy"), "top hit {top}");

    // A second run sends nothing: every document is unchanged.
    let requests = server.requests();
    let again = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(again.totals.unchanged, 6);
    assert_eq!(server.requests(), requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_errors_and_timeouts_are_retried_and_the_run_completes() {
    let server = server().await;
    let ws = Workspace::with_sample_corpus();
    let mut config = service_config(&ws, &server);
    config.embedding.timeout_s = 1.0;
    config.embedding.max_concurrency = 1;
    let index = ws.open_with(config).await;
    let after_probe = server.requests();
    server.inject([
        Fault::TooMany(1),
        Fault::ServerError,
        Fault::Slow(Duration::from_secs(3)),
    ]);
    let started = Instant::now();
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:?}");
    assert_eq!(report.totals.added, 6);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    let sent = server.requests() - after_probe;
    assert!(
        sent >= 4,
        "three failed tries and at least one answer: {sent}"
    );
    assert_eq!(
        common::points(&index).await.len() as u64,
        report.totals.chunks_embedded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_the_run_and_records_nothing_then_the_next_run_indexes() {
    let server = server().await;
    let ws = Workspace::with_sample_corpus();
    let mut config = service_config(&ws, &server);
    config.embedding.max_retries = 1;
    let index = ws.open_with(config.clone()).await;
    server.always(Some(Fault::ServerError));
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "failed", "{report:?}");
    let error = report.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("127.0.0.1:{}", server.port)) && error.contains("500"),
        "{error}"
    );
    assert!(!error.contains("/v1"), "names host:port only: {error}");
    assert_eq!(common::points(&index).await.len(), 0);
    assert_eq!(index.ledger.document_count("docs", None).await.unwrap(), 0);
    assert!(
        index
            .ledger
            .failures(Some("docs"), 10)
            .await
            .unwrap()
            .is_empty(),
        "an outage is not the documents' fault"
    );
    drop(index);

    server.always(None);
    a_clean_run_indexes_everything(&ws, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_fail_the_checks_store_nothing() {
    let server = server().await;
    let ws = Workspace::with_sample_corpus();
    let config = service_config(&ws, &server);
    for (fault, expect) in [
        (Fault::WrongDimension, "383 dimensions"),
        (Fault::WrongCount, "vectors for"),
        (Fault::NaN, "NaN"),
        (Fault::OtherModel, "some-other-model"),
    ] {
        let index = ws.open_with(config.clone()).await;
        server.always(Some(fault.clone()));
        let report = index.sync(&SyncOptions::default()).await.unwrap();
        assert_eq!(report.status, "failed", "{fault:?}: {report:?}");
        let error = report.error.clone().unwrap_or_default();
        assert!(error.contains(expect), "{fault:?}: {error}");
        assert_eq!(common::points(&index).await.len(), 0, "{fault:?}");
        assert_eq!(
            index.ledger.document_count("docs", None).await.unwrap(),
            0,
            "{fault:?}: nothing vouched"
        );
        server.always(None);
    }
    a_clean_run_indexes_everything(&ws, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_the_local_model_to_the_service_publishes_only_when_complete() {
    let server = server().await;
    let ws = Workspace::with_sample_corpus();
    let (report, _, _) = run(&ws, ws.config()).await;
    assert_eq!(report.status, "completed");
    let local = ws.open().await.info.clone();

    let mut config = service_config(&ws, &server);
    config.embedding.max_retries = 0;
    let index = ws.open_with(config.clone()).await;
    assert_ne!(index.info.collection, local.collection);
    server.inject([Fault::ServerError]);
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "failed", "{report:?}");
    assert_eq!(
        index.catalog.published().await.unwrap().as_ref(),
        Some(&local),
        "a failed switch leaves the local model's collection published"
    );
    drop(index);

    let index = ws.open_with(config).await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:?}");
    let published = index.catalog.published().await.unwrap().unwrap();
    assert_eq!(published.model_id, "openai/minilm");
    assert_eq!(published.collection, index.info.collection);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_longer_than_the_window_is_never_sent() {
    let server = server().await;
    let mut config = service_embedding(&server);
    config.max_input_tokens = Some(40);
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let result = tokio::task::spawn_blocking(move || {
        let embedder = OpenAiEmbedder::connect(&config).unwrap();
        embedder.embed(&["short text", long.as_str()])
    })
    .await
    .unwrap();
    match result {
        Err(err @ EmbedError::Rejected(_)) => {
            assert!(err.to_string().contains("window of 40"), "{err}");
            assert!(err.blames_input());
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        server.texts(),
        1,
        "only the connect probe reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_or_a_refused_key_exits_1_naming_host_and_port() {
    let model_dir = locate::model_dir(None).unwrap();
    let server = EmbedServer::start(&model_dir, Some("sesame")).await;
    let ws = Workspace::with_sample_corpus();
    let dead_port = common::free_port();
    for (url, key, expect) in [
        (
            format!("http://127.0.0.1:{dead_port}/v1"),
            "sesame",
            format!("127.0.0.1:{dead_port}"),
        ),
        (server.url(), "wrong", format!("127.0.0.1:{}", server.port)),
    ] {
        let config = format!(
            "data_dir = \"data\"\n[[sources]]\ntype = \"folder\"\nid = \"docs\"\npath = \"corpus\"\n\n[embedding]\nprovider = \"openai\"\nurl = \"{url}\"\nmodel = \"minilm\"\napi_key_env = \"TEST_EMBED_KEY\"\ntokenizer = \"{}\"\nmax_input_tokens = 510\nmax_retries = 1\ntimeout_s = 2\n",
            model_dir.join("tokenizer.json").display()
        );
        std::fs::write(ws.dir.path().join("freshet.toml"), config).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
            .current_dir(ws.dir.path())
            .args(["sync", "--config", "freshet.toml"])
            .env("TEST_EMBED_KEY", key)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&expect), "names {expect}: {stderr}");
        assert!(
            !stderr.contains("sesame") && !stderr.contains("wrong\""),
            "{stderr}"
        );
    }
}
