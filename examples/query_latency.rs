//! Query latency of the embedded store at scale: dense, sparse (BM25) and hybrid (RRF)
//! searches over a collection of N points, side by side in one run, plus the real model's
//! query-embedding time. Prints figures; asserts nothing.
//!
//! Run: `cargo run --release --example query_latency -- [--points 100000]
//! [--text DIR] [--queries FILE.jsonl]... [--optimize] [--maintain N]`
//!
//! `--optimize` runs the engine's optimiser (HNSW indexing, vacuum) once after loading.
//! `--maintain N` runs the store's housekeeping after every N points, as a sync of N chunks
//! ends (it optimises once enough points are outside the HNSW index), and prints what
//! each run cost.
//!
//! The points' BM25 vectors and payload text are windows of 150 words of real text (the
//! `.md` files under `--text`, by default the crates cargo unpacked); their dense vectors
//! are random unit vectors, since embedding 100,000 chunks would take the model an hour
//! here (random vectors are the hard case for an HNSW graph). Queries are the judged sets'
//! own (`examples/*-eval/queries.jsonl`), embedded by the real model. A query's latency as
//! an application sees it is the embedding plus the search.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use freshet::config::{EmbeddingConfig, RetrievalConfig};
use freshet::sparse::Bm25Encoder;
use freshet::store::{EdgeStore, Payload, Point, Query, QueryMode, VectorStore};

fn main() -> anyhow::Result<()> {
    let mut points = 100_000usize;
    let mut text_dir = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("no CARGO_HOME or HOME")?
        .join("registry/src");
    let mut query_files = Vec::new();
    let mut optimize = false;
    let mut maintain_every = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value after the flag");
        match arg.as_str() {
            "--points" => points = value()?.parse()?,
            "--text" => text_dir = PathBuf::from(value()?),
            "--queries" => query_files.push(PathBuf::from(value()?)),
            "--optimize" => optimize = true,
            "--maintain" => maintain_every = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if query_files.is_empty() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        query_files = vec![
            root.join("coreutils-eval/queries.jsonl"),
            root.join("sample-eval/queries.jsonl"),
        ];
    }
    let queries = read_queries(&query_files)?;
    let words = read_words(&text_dir, points * 40)?;
    if words.len() < 1_000 {
        bail!("too little text under {}", text_dir.display());
    }
    println!(
        "{} points, {} queries; text: {} words from {}",
        points,
        queries.len(),
        words.len(),
        text_dir.display()
    );

    let embedder = freshet::embed::load(&EmbeddingConfig::default())?;
    let dim = embedder.dim();
    let encoder = Bm25Encoder::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let store = runtime.block_on(EdgeStore::open(&dir.path().join("collection"), dim, true))?;

    let started = Instant::now();
    let mut maintenance = 0.0f64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for batch_start in (0..points).step_by(1_000) {
        let batch: Vec<Point> = (batch_start..(batch_start + 1_000).min(points))
            .map(|i| {
                let at = (next() as usize) % (words.len() - 150);
                let text = words[at..at + 150].join(" ");
                let mut vector: Vec<f32> = (0..dim)
                    .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                    .collect();
                let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
                vector.iter_mut().for_each(|v| *v /= norm);
                let mut payload = Payload::new();
                payload.insert("doc_key".into(), format!("doc-{}", i / 4).into());
                payload.insert("chunk_index".into(), (i % 4).into());
                payload.insert("source_id".into(), "bench".into());
                payload.insert("text".into(), text.clone().into());
                Point {
                    id: uuid::Uuid::from_u128(i as u128 + 1),
                    vector,
                    sparse: Some(encoder.document(&text)),
                    payload,
                }
            })
            .collect();
        runtime.block_on(store.upsert(batch))?;
        let loaded = batch_start + 1_000;
        if maintain_every > 0 && loaded % maintain_every == 0 {
            let started = Instant::now();
            if let Some(done) = runtime.block_on(store.maintain())? {
                maintenance += started.elapsed().as_secs_f64();
                println!("  at {loaded} points: {done}");
            }
        }
        if (batch_start + 1_000) % 50_000 == 0 {
            println!(
                "  {} points after {:.1}s",
                batch_start + 1_000,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if maintain_every > 0 {
        let (_, unindexed) = runtime.block_on(store.unindexed())?;
        println!(
            "housekeeping every {maintain_every} points: {maintenance:.1}s in all; {unindexed} points left outside the HNSW index"
        );
    }
    println!(
        "loaded in {:.1}s ({:.0} points/s, housekeeping included)",
        started.elapsed().as_secs_f64(),
        points as f64 / started.elapsed().as_secs_f64()
    );

    if optimize {
        let started = Instant::now();
        let changed = runtime.block_on(store.optimize())?;
        println!(
            "optimised in {:.1}s (changed: {changed})",
            started.elapsed().as_secs_f64()
        );
    }

    let mut embed_ms = Vec::new();
    let mut dense = Vec::new();
    for q in &queries {
        let started = Instant::now();
        let v = embedder.embed(&[q.as_str()])?.remove(0);
        embed_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        dense.push(v);
    }
    print_row("query embedding (model)", &embed_ms);
    let retrieval = RetrievalConfig::default();
    for mode in [QueryMode::Dense, QueryMode::Sparse, QueryMode::Hybrid] {
        let mut ms = Vec::new();
        let mut total = Vec::new();
        for (round, (q, v)) in std::iter::repeat_n(queries.iter().zip(&dense), 2)
            .flatten()
            .enumerate()
        {
            let query = Query {
                mode,
                dense: if mode == QueryMode::Sparse {
                    Vec::new()
                } else {
                    v.clone()
                },
                sparse: (mode != QueryMode::Dense).then(|| encoder.query(q)),
                text: q.clone(),
                k: 10,
                candidates: retrieval.candidates,
                rrf_k: retrieval.rrf_k,
                filter: None,
            };
            let started = Instant::now();
            let hits = runtime.block_on(store.search(&query))?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            if hits.is_empty() && mode == QueryMode::Dense {
                bail!("a dense query found nothing");
            }
            // The first round warms the caches; the second is measured.
            if round >= queries.len() {
                ms.push(elapsed);
                total.push(elapsed + embed_ms[round - queries.len()]);
            }
        }
        print_row(&format!("{mode:?} search"), &ms);
        if mode != QueryMode::Sparse {
            print_row(&format!("{mode:?} embedding + search"), &total);
        }
    }
    Ok(())
}

fn print_row(label: &str, ms: &[f64]) {
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| {
        sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    };
    println!(
        "{label:<32} p50 {:>7.2} ms   p95 {:>7.2} ms   max {:>7.2} ms",
        at(50.0),
        at(95.0),
        at(100.0)
    );
}

fn read_queries(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)?;
            if let Some(q) = value.get("text").and_then(|t| t.as_str()) {
                out.push(q.to_string());
            }
        }
    }
    Ok(out)
}

/// Words of the `.md` files under `dir`, in path order, until `want` are read.
fn read_words(dir: &Path, want: usize) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let (path, kind) = (entry.path(), entry.file_type()?);
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|x| x == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut words = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        words.extend(text.split_whitespace().map(str::to_string));
        if words.len() >= want {
            break;
        }
    }
    Ok(words)
}
