//! Indexing benchmark: raw ONNX Runtime session throughput vs. the whole pipeline, cold
//! sync time, no-op re-sync time and peak memory, measured side by side in one run on the
//! same model and thread count. Prints figures; asserts nothing.
//!
//! Run: `cargo run --release --example bench -- [--docs 2000] [--threads 0]
//! [--store embedded,pgvector,qdrant]`
//!
//! `--store` runs the cold and no-op syncs once per store kind, side by side: pgvector
//! uses `FRESHET_PGVECTOR_URL` (or starts `scripts/pgvector`), Qdrant needs
//! `FRESHET_BENCH_QDRANT_URL` (a server's gRPC port; `FRESHET_BENCH_QDRANT_API_KEY` if it
//! wants a key). Each gets a fresh table or collection, dropped afterwards.
//!
//! Each measurement runs in a child process of its own, so peak memory (VmHWM) belongs to
//! that measurement alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use freshet::chunk::Chunker;
use freshet::config::{Config, EmbeddingConfig, FolderConfig, SourceConfig};
use freshet::config::{PgvectorConfig, QdrantConfig, StoreConfig, WriteOrderingConfig};
use freshet::embed::{load_plain_tokenizer, locate, ort_environment};
use freshet::extract::{extract, MediaType};
use freshet::index::LockMode;
use freshet::pipeline::SyncOptions;
use freshet::store::{Filter, Hit, Point, PointId, StoreError, StoredPoint, VectorStore};
use freshet::Index;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::Tensor;
use serde::{Deserialize, Serialize};

/// How one way of feeding the raw session did.
#[derive(Debug, Serialize, Deserialize)]
struct RawStrategy {
    name: String,
    real_tokens: u64,
    padded_tokens: u64,
    seconds: f64,
}

impl RawStrategy {
    fn of(name: String, calls: &[Prepared], seconds: f64) -> Self {
        Self {
            name,
            real_tokens: calls.iter().map(|c| c.real).sum(),
            padded_tokens: calls.iter().map(|c| (c.rows * c.width) as u64).sum(),
            seconds,
        }
    }
}

/// A session option the raw measurements vary, one at a time.
#[derive(Clone, Copy)]
enum Tweak {
    None,
    NoSpinning,
    NoMemoryPattern,
    Level1,
    NoPrepacking,
}

impl Tweak {
    fn apply(self, builder: SessionBuilder) -> anyhow::Result<SessionBuilder> {
        let tweaked = match self {
            Tweak::None => return Ok(builder),
            Tweak::NoSpinning => builder.with_intra_op_spinning(false),
            Tweak::NoMemoryPattern => builder.with_memory_pattern(false),
            Tweak::Level1 => builder.with_optimization_level(GraphOptimizationLevel::Level1),
            Tweak::NoPrepacking => builder.with_prepacking(false),
        };
        tweaked.map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// One call's inputs, tokenized and padded ahead of time so that only `session.run` is
/// timed.
#[derive(Clone)]
struct Prepared {
    rows: usize,
    width: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    real: u64,
}

impl Prepared {
    fn new(encodings: &[tokenizers::Encoding], max_length: usize) -> Self {
        let width = encodings
            .iter()
            .map(|e| e.len().min(max_length))
            .max()
            .unwrap_or(1)
            .max(1);
        let rows = encodings.len();
        let mut ids = vec![0i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        let mut real = 0;
        for (r, e) in encodings.iter().enumerate() {
            for (c, id) in e.get_ids().iter().take(width).enumerate() {
                ids[r * width + c] = *id as i64;
                mask[r * width + c] = 1;
            }
            real += e.len().min(width) as u64;
        }
        Self {
            rows,
            width,
            ids,
            mask,
            real,
        }
    }
}

/// Runs every call through the session; returns the seconds inside `session.run` only.
fn time_calls(
    session: &mut Session,
    calls: &[Prepared],
    needs_token_types: bool,
) -> anyhow::Result<f64> {
    let mut seconds = 0.0;
    for call in calls {
        let shape = [call.rows as i64, call.width as i64];
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, call.ids.clone()))?,
            "attention_mask" => Tensor::from_array((shape, call.mask.clone()))?,
        ];
        if needs_token_types {
            inputs.push((
                "token_type_ids".into(),
                Tensor::from_array((shape, vec![0i64; call.rows * call.width]))?.into(),
            ));
        }
        let started = Instant::now();
        let outputs = session.run(inputs)?;
        seconds += started.elapsed().as_secs_f64();
        drop(outputs);
    }
    Ok(seconds)
}

#[derive(Debug, Serialize, Deserialize)]
struct RawResult {
    sample_chunks: usize,
    strategies: Vec<RawStrategy>,
    /// The same sample through `FastEmbedder::embed`, in document order and
    /// pipeline-sized batches.
    embedder_seconds: f64,
    embedder_tokens: u64,
    /// The same sample through plain fastembed: `TextEmbedding::embed(texts, None)`, its
    /// default batching, same model file and threads.
    plain_fastembed_seconds: f64,
    peak_rss_kib: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncResult {
    store: String,
    docs: usize,
    points_upserted: u64,
    /// Time inside the store's calls during the cold sync (upserts, deletes, reuse
    /// lookups), and inside upserts alone.
    store_seconds: f64,
    upsert_seconds: f64,
    chunks: u64,
    real_tokens: u64,
    open_seconds: f64,
    cold_seconds: f64,
    noop_seconds: f64,
    embed_seconds: f64,
    /// Peak resident memory, including index files the store maps into memory.
    peak_rss_kib: u64,
    /// Peak anonymous (heap) memory during the cold sync, sampled every 10 ms: what the
    /// pipeline itself holds, without the page cache of mapped index files.
    peak_anon_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let docs = flag("--docs", 2000);
    let threads = flag("--threads", 0);
    let stores: Vec<String> = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1))
        .map_or("embedded", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench-data");
    match args.get(1).map(String::as_str) {
        Some("raw") => {
            let result = raw_session(&corpus_dir(&root, docs), threads)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Some("sync") => {
            let result = pipeline_sync(&root, docs, threads, &stores[0])?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        _ => parent(&root, docs, threads, &stores),
    }
}

fn parent(root: &Path, docs: usize, threads: usize, stores: &[String]) -> anyhow::Result<()> {
    if stores.iter().any(|s| s == "pgvector") && std::env::var("FRESHET_PGVECTOR_URL").is_err() {
        let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pgvector"))
            .arg("start")
            .output()?;
        if !out.status.success() {
            bail!(
                "scripts/pgvector start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::env::set_var(
            "FRESHET_PGVECTOR_URL",
            String::from_utf8(out.stdout)?.trim(),
        );
    }
    let half = docs / 2;
    for n in [half, docs] {
        generate_corpus(&corpus_dir(root, n), n)?;
    }
    let me = std::env::current_exe()?;
    let child = |args: &[String]| -> anyhow::Result<String> {
        let out = Command::new(&me).args(args).output()?;
        if !out.status.success() {
            bail!(
                "child {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    let t = threads.to_string();
    println!(
        "freshet indexing benchmark: {docs} documents, threads={} (0 = all cores), {} cores",
        threads,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let raw: RawResult = serde_json::from_str(&child(&[
        "raw".into(),
        "--docs".into(),
        docs.to_string(),
        "--threads".into(),
        t.clone(),
    ])?)?;
    let small: SyncResult = serde_json::from_str(&child(&[
        "sync".into(),
        "--docs".into(),
        half.to_string(),
        "--threads".into(),
        t.clone(),
        "--store".into(),
        stores[0].clone(),
    ])?)?;
    let mut per_store = Vec::new();
    for store in stores {
        per_store.push(serde_json::from_str::<SyncResult>(&child(&[
            "sync".into(),
            "--docs".into(),
            docs.to_string(),
            "--threads".into(),
            t.clone(),
            "--store".into(),
            store.clone(),
        ])?)?);
    }
    let full = &per_store[0];

    let pipe_tps = full.real_tokens as f64 / full.cold_seconds;
    println!();
    println!(
        "raw ONNX Runtime session on {} sampled chunks (only session.run timed):",
        raw.sample_chunks
    );
    let mut ceiling = 0f64;
    for s in &raw.strategies {
        let tps = s.real_tokens as f64 / s.seconds;
        ceiling = ceiling.max(tps);
        println!(
            "  {:<60} {:>8.0} real tokens/s  ({} real / {} padded tokens, {:.1}s)",
            s.name, tps, s.real_tokens, s.padded_tokens, s.seconds
        );
    }
    println!(
        "FastEmbedder alone, same sample   {:>8.0} real tokens/s  ({:.1}s)",
        raw.embedder_tokens as f64 / raw.embedder_seconds,
        raw.embedder_seconds
    );
    let plain_tps = raw.embedder_tokens as f64 / raw.plain_fastembed_seconds;
    println!(
        "plain fastembed embed(texts, None) {:>7.0} real tokens/s  ({:.1}s)",
        plain_tps, raw.plain_fastembed_seconds
    );
    println!(
        "FastEmbedder / plain fastembed    {:>8.2}x  (target >= 1.5)",
        raw.plain_fastembed_seconds / raw.embedder_seconds
    );
    println!(
        "raw session peak RSS              {:>8} KiB",
        raw.peak_rss_kib
    );
    println!();
    println!("pipeline, cold sync               {:>8.0} real tokens/s  ({} chunks, {} real tokens, {:.1}s wall; model load {:.1}s not counted)",
        pipe_tps, full.chunks, full.real_tokens, full.cold_seconds, full.open_seconds);
    println!(
        "  of which inside the embedder {:.1}s ({:.0}%)",
        full.embed_seconds,
        100.0 * full.embed_seconds / full.cold_seconds
    );
    println!(
        "pipeline / best raw               {:>8.3}   (target >= 0.95 in the release profile)",
        pipe_tps / ceiling
    );
    println!(
        "cold sync                  {:>10.2} s for {} documents",
        full.cold_seconds, full.docs
    );
    println!(
        "no-op re-sync              {:>10.3} s = {:.2}% of cold   (target <= 2%)",
        full.noop_seconds,
        100.0 * full.noop_seconds / full.cold_seconds
    );
    if per_store.len() > 1 || full.store != "embedded" {
        println!();
        println!(
            "stores, side by side ({} documents, {} points each):",
            full.docs, full.points_upserted
        );
        for r in &per_store {
            println!(
                "  {:<9} cold {:>7.1}s ({:.3}x {})   upserts {:>7.0} points/s   store share {:>5.1}% of cold   no-op re-sync {:.3}s",
                r.store,
                r.cold_seconds,
                r.cold_seconds / full.cold_seconds,
                full.store,
                r.points_upserted as f64 / r.upsert_seconds.max(1e-9),
                100.0 * r.store_seconds / r.cold_seconds,
                r.noop_seconds,
            );
        }
        println!("  (target: pgvector cold <= 1.1x embedded, the embedder stays the bottleneck)");
    }
    for r in [&small, full] {
        println!(
            "peak anonymous memory, {:>5} documents   {:>8} KiB",
            r.docs, r.peak_anon_kib
        );
    }
    println!(
        "  ratio {:.3} for {}x the documents (target: no growth with corpus size)",
        full.peak_anon_kib as f64 / small.peak_anon_kib.max(1) as f64,
        full.docs / small.docs.max(1)
    );
    for r in [&small, full] {
        println!(
            "peak RSS incl. mapped index files, {:>5} documents   {:>8} KiB",
            r.docs, r.peak_rss_kib
        );
    }
    Ok(())
}

fn corpus_dir(root: &Path, docs: usize) -> PathBuf {
    root.join(format!("corpus-{docs}"))
}

/// Deterministic Markdown documents of varied length (a few hundred to a few thousand
/// tokens), so chunk lengths vary like real ones do.
fn generate_corpus(dir: &Path, docs: usize) -> anyhow::Result<()> {
    if dir.join(".complete").is_file() {
        return Ok(());
    }
    const WORDS: &[&str] = &[
        "system",
        "data",
        "index",
        "query",
        "vector",
        "model",
        "river",
        "mountain",
        "policy",
        "customer",
        "order",
        "invoice",
        "battery",
        "engine",
        "bridge",
        "garden",
        "recipe",
        "protein",
        "network",
        "server",
        "latency",
        "storage",
        "archive",
        "contract",
        "budget",
        "weather",
        "forest",
        "planet",
        "signal",
        "sensor",
        "market",
        "language",
        "history",
        "music",
        "theory",
        "method",
        "result",
        "process",
        "factory",
        "vehicle",
        "harbor",
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "with",
        "on",
        "as",
        "by",
        "quickly",
        "carefully",
        "rarely",
        "measures",
        "builds",
        "explains",
        "improves",
        "reduces",
        "connects",
        "describes",
        "stores",
        "returns",
        "changes",
        "supports",
        "large",
        "small",
        "recent",
        "stable",
        "complex",
        "simple",
        "open",
        "private",
    ];
    std::fs::create_dir_all(dir)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for d in 0..docs {
        let sub = dir.join(format!("part{:02}", d % 20));
        std::fs::create_dir_all(&sub)?;
        let mut text = format!("# Document {d}\n\n");
        let sections = 1 + next(4);
        for s in 0..sections {
            text.push_str(&format!(
                "## Section {s} about {}\n\n",
                WORDS[next(WORDS.len())]
            ));
            for _ in 0..(1 + next(4)) {
                for _ in 0..(3 + next(6)) {
                    let words = 8 + next(14);
                    let mut sentence: Vec<&str> =
                        (0..words).map(|_| WORDS[next(WORDS.len())]).collect();
                    let first = sentence[0].to_string();
                    let capital = first[..1].to_uppercase() + &first[1..];
                    sentence[0] = &capital;
                    text.push_str(&sentence.join(" "));
                    text.push_str(". ");
                }
                text.push_str("\n\n");
            }
        }
        std::fs::write(sub.join(format!("doc{d:05}.md")), text)?;
    }
    std::fs::write(dir.join(".complete"), b"")?;
    Ok(())
}

fn embedding_config(threads: usize) -> EmbeddingConfig {
    EmbeddingConfig {
        threads,
        ..EmbeddingConfig::default()
    }
}

/// The chunks the pipeline embeds for this corpus, computed with the pipeline's own
/// extraction and chunking code.
fn corpus_chunks(corpus: &Path, tokenizer: &tokenizers::Tokenizer) -> anyhow::Result<Vec<String>> {
    let chunker = Chunker::new(
        freshet::embed::Tokens::new(tokenizer.clone()),
        Config::default().chunking,
    );
    let mut texts = Vec::new();
    let mut files: Vec<PathBuf> = walk(corpus)?;
    files.sort();
    for file in files {
        let bytes = std::fs::read(&file)?;
        let extracted = extract(&bytes, MediaType::Markdown).map_err(|e| anyhow::anyhow!("{e}"))?;
        texts.extend(
            chunker
                .chunk(&extracted, MediaType::Markdown)
                .into_iter()
                .map(|c| c.embed_text),
        );
    }
    Ok(texts)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Real (unpadded) tokens the model sees for these texts: special tokens included,
/// truncated at the model input length, as the pipeline feeds them.
fn real_tokens(tokenizer: &tokenizers::Tokenizer, texts: &[String], max_length: usize) -> u64 {
    texts
        .iter()
        .map(|t| {
            tokenizer
                .encode(t.as_str(), true)
                .map_or(0, |e| e.len().min(max_length)) as u64
        })
        .sum()
}

/// Chunks sampled evenly across the corpus for the raw-session measurements.
const RAW_SAMPLE: usize = 1024;

/// The ceiling: one ONNX Runtime session, same model file and threads, fed pre-tokenized
/// length-sorted inputs in three ways; only `session.run` is timed. The fastest way is
/// the ceiling the pipeline is compared with.
fn raw_session(corpus: &Path, threads: usize) -> anyhow::Result<RawResult> {
    let config = embedding_config(threads);
    let environment = ort_environment(None)?;
    let model_dir = locate::model_dir(None)?;
    let tokenizer = load_plain_tokenizer(&model_dir)?;
    let all = corpus_chunks(corpus, &tokenizer)?;
    let step = (all.len() / RAW_SAMPLE).max(1);
    let sample: Vec<String> = all.into_iter().step_by(step).take(RAW_SAMPLE).collect();
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let load = |threads: usize, tweak: Tweak| -> anyhow::Result<Session> {
        let builder = Session::builder(&environment)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_intra_threads(threads)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tweak
            .apply(builder)?
            .commit_from_file(model_dir.join("model.onnx"))
            .context("load model.onnx")
    };
    let mut session = load(threads, Tweak::None)?;
    let needs_token_types = session
        .inputs()
        .iter()
        .any(|i| i.name() == "token_type_ids");

    let refs: Vec<&str> = sample.iter().map(String::as_str).collect();
    let mut sorted: Vec<usize> = (0..refs.len()).collect();
    sorted.sort_by_key(|&i| refs[i].len());
    let fixed = |n: usize| sorted.chunks(n).map(<[usize]>::to_vec).collect::<Vec<_>>();
    let prepare = |groups: Vec<Vec<usize>>| -> anyhow::Result<Vec<Prepared>> {
        groups
            .into_iter()
            .map(|group| {
                let batch: Vec<&str> = group.iter().map(|&i| refs[i]).collect();
                let encodings = tokenizer
                    .encode_batch(batch, true)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(Prepared::new(&encodings, config.max_length))
            })
            .collect()
    };
    let grouped = prepare(freshet::embed::length_groups(
        &refs,
        config.batch_size,
        config.batch_tokens,
    ))?;
    let groups_name = format!(
        "freshet length groups (<= {} texts, <= {} tokens)",
        config.batch_size, config.batch_tokens
    );
    let mut strategies = Vec::new();
    for (name, prepared) in [
        ("sorted, 32 per call".to_string(), prepare(fixed(32))?),
        ("sorted, 1 per call".to_string(), prepare(fixed(1))?),
        (format!("sorted, {groups_name}"), grouped.clone()),
    ] {
        let seconds = time_calls(&mut session, &prepared, needs_token_types)?;
        strategies.push(RawStrategy::of(name, &prepared, seconds));
    }
    drop(session);
    // The variants the issue lists, each fed the length groups.
    let variants = [
        ("variant: intra-op spinning off", Tweak::NoSpinning),
        ("variant: memory pattern off", Tweak::NoMemoryPattern),
        ("variant: graph optimization level 1", Tweak::Level1),
        ("variant: weights prepacking off", Tweak::NoPrepacking),
    ];
    for (name, tweak) in variants {
        let mut session = load(threads, tweak)?;
        let seconds = time_calls(&mut session, &grouped, needs_token_types)?;
        strategies.push(RawStrategy::of(
            format!("{name}, {groups_name}"),
            &grouped,
            seconds,
        ));
    }
    if threads > 1 {
        // One single-threaded session per core, the length groups dealt out in turn.
        let mut sessions = (0..threads)
            .map(|_| load(1, Tweak::None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles: Vec<_> = sessions
                .iter_mut()
                .enumerate()
                .map(|(n, session)| {
                    let mine: Vec<Prepared> =
                        grouped.iter().skip(n).step_by(threads).cloned().collect();
                    scope.spawn(move || time_calls(session, &mine, needs_token_types))
                })
                .collect();
            for handle in handles {
                handle.join().expect("session thread")?;
            }
            Ok(())
        })?;
        strategies.push(RawStrategy::of(
            format!("variant: {threads} single-threaded sessions in parallel, {groups_name}"),
            &grouped,
            started.elapsed().as_secs_f64(),
        ));
    }

    let embedder = freshet::embed::FastEmbedder::load(&config)?;
    let started = Instant::now();
    for batch in refs.chunks(Config::default().pipeline.commit_batch_chunks) {
        freshet::embed::Embedder::embed(&embedder, batch)?;
    }
    let embedder_seconds = started.elapsed().as_secs_f64();
    drop(embedder);
    let plain_fastembed_seconds = plain_fastembed(&model_dir, threads, &refs)?;
    Ok(RawResult {
        plain_fastembed_seconds,
        sample_chunks: sample.len(),
        embedder_tokens: real_tokens(&tokenizer, &sample, config.max_length),
        strategies,
        embedder_seconds,
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Plain fastembed as its users call it: a user-defined model from the same files, the
/// same thread count, `embed(texts, None)` (its default batch of 256, padded to the
/// longest text in each batch). Returns the seconds for the whole sample.
fn plain_fastembed(model_dir: &Path, threads: usize, texts: &[&str]) -> anyhow::Result<f64> {
    use fastembed::{
        InitOptionsUserDefined, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
    };
    let read = |name: &str| std::fs::read(model_dir.join(name));
    let files = TokenizerFiles {
        tokenizer_file: read("tokenizer.json")?,
        config_file: read("config.json")?,
        special_tokens_map_file: read("special_tokens_map.json")?,
        tokenizer_config_file: read("tokenizer_config.json")?,
    };
    let model = UserDefinedEmbeddingModel::new(read("model.onnx")?, files)
        .with_pooling(fastembed::Pooling::Mean);
    let options = InitOptionsUserDefined::new()
        .with_environment(ort_environment(None)?)
        .with_intra_threads(threads);
    let mut plain = TextEmbedding::try_new_from_user_defined(model, options)?;
    let started = Instant::now();
    let vectors = plain.embed(texts, None)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(vectors.len() == texts.len(), "plain fastembed lost texts");
    Ok(seconds)
}

/// The store a benchmark child writes to: a fresh table or collection per run.
fn store_config(kind: &str) -> anyhow::Result<StoreConfig> {
    let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    Ok(match kind {
        "embedded" => StoreConfig::Embedded,
        "pgvector" => StoreConfig::Pgvector(PgvectorConfig {
            url_env: "FRESHET_PGVECTOR_URL".into(),
            schema: "public".into(),
            table: name,
            ef_search: 100,
            timeout_s: 30,
            batch_rows: 500,
        }),
        "qdrant" => StoreConfig::Qdrant(QdrantConfig {
            url: std::env::var("FRESHET_BENCH_QDRANT_URL")
                .context("--store qdrant needs FRESHET_BENCH_QDRANT_URL (a server's gRPC port)")?,
            api_key_env: std::env::var("FRESHET_BENCH_QDRANT_API_KEY")
                .is_ok()
                .then(|| "FRESHET_BENCH_QDRANT_API_KEY".to_string()),
            ca_cert: None,
            timeout_s: 30,
            collection: name,
            shard_number: 1,
            replication_factor: 1,
            write_consistency_factor: 1,
            on_disk: false,
            write_ordering: WriteOrderingConfig::Weak,
            batch_points: 256,
            max_request_bytes: 8 << 20,
            max_in_flight: 4,
        }),
        other => bail!("unknown store kind {other} (embedded, pgvector or qdrant)"),
    })
}

/// The real store, with the time spent inside its calls counted.
struct TimedStore {
    inner: std::sync::Arc<dyn VectorStore>,
    nanos: std::sync::atomic::AtomicU64,
    upsert_nanos: std::sync::atomic::AtomicU64,
}

impl TimedStore {
    fn add(&self, started: Instant) {
        self.nanos.fetch_add(
            started.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

#[async_trait::async_trait]
impl VectorStore for TimedStore {
    async fn ensure_collection(&self, dim: usize) -> Result<(), StoreError> {
        self.inner.ensure_collection(dim).await
    }
    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.upsert(points).await;
        self.upsert_nanos.fetch_add(
            started.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.add(started);
        result
    }
    async fn delete(&self, ids: Vec<PointId>) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.delete(ids).await;
        self.add(started);
        result
    }
    async fn search(&self, query: &freshet::store::Query) -> Result<Vec<Hit>, StoreError> {
        self.inner.search(query).await
    }
    async fn count(&self, filter: Option<Filter>) -> Result<usize, StoreError> {
        self.inner.count(filter).await
    }
    async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<Filter>,
        with_vectors: bool,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), StoreError> {
        let started = Instant::now();
        let result = self.inner.scroll(offset, limit, filter, with_vectors).await;
        self.add(started);
        result
    }
}

/// The product path: a cold `sync` into a fresh data directory, then a no-op re-sync.
fn pipeline_sync(
    root: &Path,
    docs: usize,
    threads: usize,
    store: &str,
) -> anyhow::Result<SyncResult> {
    let corpus = corpus_dir(root, docs);
    let data = root.join(format!("data-{docs}"));
    let _ = std::fs::remove_dir_all(&data);
    let store_config = store_config(store)?;
    let config = Config {
        store: store_config.clone(),
        data_dir: data.clone(),
        sources: vec![SourceConfig::Folder(FolderConfig {
            id: "bench".into(),
            path: corpus.clone(),
            include: vec![],
            exclude: vec![],
            respect_gitignore: true,
            include_hidden: false,
            partitions: 1,
        })],
        embedding: embedding_config(threads),
        ..Config::default()
    };
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib("RssAnon:"));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (
        open_seconds,
        cold_seconds,
        noop_seconds,
        chunks,
        embed_seconds,
        points_upserted,
        store_nanos,
    ) = runtime.block_on(async {
        let started = Instant::now();
        let mut index = Index::open_for_sync(config, LockMode::FailIfBusy).await?;
        let open_seconds = started.elapsed().as_secs_f64();
        let wrapped = std::sync::Arc::new(TimedStore {
            inner: index.store.clone(),
            nanos: 0.into(),
            upsert_nanos: 0.into(),
        });
        index.store = wrapped.clone();
        let started = Instant::now();
        let cold = index.sync(&SyncOptions::default()).await?;
        let cold_seconds = started.elapsed().as_secs_f64();
        if cold.status != "completed" {
            bail!("cold sync: {cold:?}");
        }
        let store_nanos = (
            wrapped.nanos.load(std::sync::atomic::Ordering::Relaxed),
            wrapped
                .upsert_nanos
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let started = Instant::now();
        let noop = index.sync(&SyncOptions::default()).await?;
        let noop_seconds = started.elapsed().as_secs_f64();
        if noop.totals.chunks_embedded != 0 {
            bail!("no-op sync embedded {} chunks", noop.totals.chunks_embedded);
        }
        anyhow::Ok((
            open_seconds,
            cold_seconds,
            noop_seconds,
            cold.totals.chunks_embedded,
            cold.totals.embed_ms as f64 / 1000.0,
            cold.totals.points_upserted,
            store_nanos,
        ))
    })?;
    drop_bench_store(&runtime, &store_config)?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_anon_kib = sampler.join().unwrap_or(0);
    let peak_rss_kib = peak_rss_kib();
    let tokenizer = load_plain_tokenizer(&locate::model_dir(None)?)?;
    let texts = corpus_chunks(&corpus, &tokenizer)?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(SyncResult {
        store: store.to_string(),
        docs,
        points_upserted,
        store_seconds: store_nanos.0 as f64 / 1e9,
        upsert_seconds: store_nanos.1 as f64 / 1e9,
        chunks,
        real_tokens: real_tokens(&tokenizer, &texts, EmbeddingConfig::default().max_length),
        open_seconds,
        cold_seconds,
        noop_seconds,
        embed_seconds,
        peak_rss_kib,
        peak_anon_kib,
    })
}

/// Drops the benchmark's table (and view) or collection (and alias) on a server.
fn drop_bench_store(runtime: &tokio::runtime::Runtime, store: &StoreConfig) -> anyhow::Result<()> {
    runtime.block_on(async {
        match store {
            StoreConfig::Embedded => {}
            StoreConfig::Pgvector(p) => {
                let pool = sqlx::PgPool::connect(&std::env::var(&p.url_env)?).await?;
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND starts_with(tablename::text, $1)",
                )
                .bind(format!("{}__", p.table))
                .fetch_all(&pool)
                .await?;
                sqlx::query(&format!("DROP VIEW IF EXISTS public.\"{}\"", p.table)).execute(&pool).await?;
                for table in tables {
                    sqlx::query(&format!("DROP TABLE IF EXISTS public.\"{table}\"")).execute(&pool).await?;
                }
            }
            StoreConfig::Qdrant(q) => {
                let client = qdrant_client::Qdrant::from_url(&q.url)
                    .api_key(std::env::var("FRESHET_BENCH_QDRANT_API_KEY").ok())
                    // Its version check prints to stdout, which carries the child's result.
                    .skip_compatibility_check()
                    .build()?;
                for collection in client.list_collections().await?.collections {
                    if collection.name.starts_with(&format!("{}__", q.collection)) {
                        client.delete_collection(collection.name).await?;
                    }
                }
            }
        }
        anyhow::Ok(())
    })
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
