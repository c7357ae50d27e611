//! Peer comparison: swiftide 0.32 indexing the same Markdown corpus with the same ONNX
//! model as freshet. Not part of freshet; see README.md.
//!
//! Subcommands:
//!   gen-corpus DIR DOCS          freshet's bench corpus (examples/bench.rs `generate_corpus`)
//!   index CORPUS MODEL_DIR OUT   swiftide pipeline; prints its timed section as JSON, then
//!                                writes the texts it embedded to OUT (JSON lines)
//!   count KIND MODEL_DIR FILE    chunks, characters and real tokens of a JSON-lines file
//!                                (KIND: freshet = `freshet export` output, swiftide = OUT)
//!   report DIR                   the table, from the files run.sh leaves in DIR

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use swiftide::indexing::{
    self, loaders::FileLoader, persist::MemoryStorage, transformers::ChunkMarkdown,
    transformers::Embed, TextNode,
};
use swiftide::integrations::fastembed::FastEmbed;

/// The model's input window; the tokenizer truncates there, as both sides feed it.
const MAX_LENGTH: usize = 512;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i}; see src/main.rs"))
    };
    match arg(0)? {
        "gen-corpus" => generate_corpus(Path::new(arg(1)?), arg(2)?.parse()?),
        "index" => index(Path::new(arg(1)?), Path::new(arg(2)?), Path::new(arg(3)?)),
        "count" => count(arg(1)?, Path::new(arg(2)?), Path::new(arg(3)?)),
        "report" => report(Path::new(arg(1)?)),
        other => bail!("unknown subcommand {other}"),
    }
}

/// Environment knobs of the swiftide side (all optional).
fn env_usize(name: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Some(v.parse().with_context(|| name.to_string())?)),
        _ => Ok(None),
    }
}

fn index(corpus: &Path, model_dir: &Path, out: &Path) -> anyhow::Result<()> {
    // ChunkMarkdown chunks by characters; freshet by tokens (256, overlap 32). At most 1600
    // characters gives about freshet's mean chunk (~950 characters) and chunk count on this
    // corpus; 1000 gives ~600-character chunks, 1.6x as many (run.sh prints both sides').
    let max_chars = env_usize("PEER_MAX_CHARS")?.unwrap_or(1600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let read = |name: &str| {
        std::fs::read(model_dir.join(name)).with_context(|| format!("{}/{name}", model_dir.display()))
    };
    let model = fastembed::UserDefinedEmbeddingModel::new(
        read("model.onnx")?,
        fastembed::TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        },
    )
    .with_pooling(fastembed::Pooling::Mean);
    // fastembed 4.9 gives the session `available_parallelism()` intra-op threads.
    let text_embedding = fastembed::TextEmbedding::try_new_from_user_defined(
        model,
        fastembed::InitOptionsUserDefined::new().with_max_length(MAX_LENGTH),
    )?;
    let mut builder = FastEmbed::builder().embedding_model(text_embedding);
    if let Some(n) = env_usize("PEER_BATCH_SIZE")? {
        builder = builder.batch_size(n);
    }
    let fastembed = builder.build()?;
    let load_seconds = started.elapsed().as_secs_f64();

    let storage = MemoryStorage::default();
    let mut embed = Embed::new(fastembed);
    if let Some(n) = env_usize("PEER_BATCH_SIZE")? {
        embed = embed.with_batch_size(n);
    }
    let pipeline_started = Instant::now();
    runtime.block_on(
        indexing::Pipeline::from_loader(FileLoader::new(corpus).with_extensions(&["md"]))
            .then_chunk(ChunkMarkdown::from_max_characters(max_chars))
            .then_in_batch(embed)
            .then_store_with(storage.clone())
            .run(),
    )?;
    let pipeline_seconds = pipeline_started.elapsed().as_secs_f64();
    let total_seconds = started.elapsed().as_secs_f64();

    // Outside the timed section: what was embedded, for the token count.
    let nodes: Vec<TextNode> = runtime.block_on(storage.get_all_values());
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut without_vector = 0;
    for node in &nodes {
        if node.vectors.as_ref().is_none_or(|v| v.is_empty()) {
            without_vector += 1;
        }
        for (_, embedded) in node.as_embeddables() {
            serde_json::to_writer(
                &mut file,
                &serde_json::json!({"text": node.chunk, "embed_text": embedded}),
            )?;
            file.write_all(b"\n")?;
        }
    }
    file.flush()?;
    if without_vector > 0 {
        bail!("{without_vector} nodes have no vector");
    }
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes.len(),
            "max_chars": max_chars,
            "load_seconds": load_seconds,
            "pipeline_seconds": pipeline_seconds,
            "in_process_seconds": total_seconds,
            "threads": std::thread::available_parallelism()?.get(),
        })
    );
    Ok(())
}

/// A freshet chunk's `embed_text` rebuilt from its payload: `contextual_text` in freshet's
/// src/chunk.rs (`[chunking] context = "heading"`, the default), checked against the
/// payload's `chunk_hash` (blake3 of the embed text).
fn freshet_embed_text(payload: &serde_json::Value) -> anyhow::Result<String> {
    let text = payload["text"].as_str().context("payload without text")?;
    let headings: Vec<&str> = payload["heading_path"]
        .as_array()
        .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
        .unwrap_or_default();
    let title = payload["title"].as_str();
    let context = if headings.is_empty() {
        title.unwrap_or_default().to_string()
    } else {
        headings.join(" > ")
    };
    let last = headings.last().copied().or(title);
    let already_there = last.is_some_and(|h| text.trim_start_matches(['#', ' ']).starts_with(h))
        && headings.len() <= 1;
    let embed_text = if context.is_empty() || already_there {
        text.to_string()
    } else {
        format!("{context}\n\n{text}")
    };
    let expected = payload["chunk_hash"].as_str().context("payload without chunk_hash")?;
    if blake3::hash(embed_text.as_bytes()).to_hex().as_str() != expected {
        bail!("rebuilt embed text does not match chunk_hash {expected}");
    }
    Ok(embed_text)
}

fn count(kind: &str, model_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokens = |t: &str| -> anyhow::Result<u64> {
        let encoding = tokenizer
            .encode(t, true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(encoding.len().min(MAX_LENGTH) as u64)
    };
    let (mut chunks, mut chars, mut text_tokens, mut embed_tokens, mut longest) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)?;
        let (text, embed_text) = match kind {
            "freshet" => {
                let payload = &value["payload"];
                (
                    payload["text"].as_str().context("no text")?.to_string(),
                    freshet_embed_text(payload)?,
                )
            }
            "swiftide" => (
                value["text"].as_str().context("no text")?.to_string(),
                value["embed_text"].as_str().context("no embed_text")?.to_string(),
            ),
            other => bail!("unknown kind {other}"),
        };
        chunks += 1;
        chars += text.chars().count() as u64;
        text_tokens += tokens(&text)?;
        let t = tokens(&embed_text)?;
        longest = longest.max(t);
        embed_tokens += t;
    }
    println!(
        "{}",
        serde_json::json!({
            "chunks": chunks,
            "chunk_chars": chars,
            "chunk_text_tokens": text_tokens,
            "embed_tokens": embed_tokens,
            "longest_embed_tokens": longest,
        })
    );
    Ok(())
}

/// `/usr/bin/time -v` output: (wall seconds, peak RSS KiB).
fn parse_time(path: &Path) -> anyhow::Result<(f64, u64)> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut wall = None;
    let mut rss = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss): ") {
            let mut seconds = 0.0;
            for part in v.split(':') {
                seconds = seconds * 60.0 + part.parse::<f64>()?;
            }
            wall = Some(seconds);
        } else if let Some(v) = line.strip_prefix("Maximum resident set size (kbytes): ") {
            rss = Some(v.parse()?);
        } else if let Some(v) = line.strip_prefix("Exit status: ") {
            if v != "0" {
                bail!("{}: exit status {v}", path.display());
            }
        }
    }
    Ok((
        wall.context("no wall time")?,
        rss.context("no max RSS")?,
    ))
}

fn report(dir: &Path) -> anyhow::Result<()> {
    struct Row {
        side: String,
        run: String,
        wall: f64,
        rss_kib: u64,
        chunks: u64,
        chars: u64,
        text_tokens: u64,
        embed_tokens: u64,
        pipeline: Option<f64>,
        sync: Option<f64>,
    }
    let mut rows = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "time"))
        .collect();
    names.sort();
    for time_file in names {
        let stem = time_file.file_stem().unwrap().to_string_lossy().to_string();
        let (side, run) = stem.split_once('-').context("name SIDE-RUN.time")?;
        let (wall, rss_kib) = parse_time(&time_file)?;
        let counts: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.count.json")))?)?;
        let pipeline = std::fs::read_to_string(dir.join(format!("{stem}.timed.json")))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["pipeline_seconds"].as_f64());
        let sync = std::fs::read_to_string(dir.join(format!("{stem}.sync.json")))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["duration_ms"].as_f64())
            .map(|ms| ms / 1000.0);
        let n = |k: &str| counts[k].as_u64().unwrap_or(0);
        rows.push(Row {
            side: side.into(),
            run: run.into(),
            wall,
            rss_kib,
            chunks: n("chunks"),
            chars: n("chunk_chars"),
            text_tokens: n("chunk_text_tokens"),
            embed_tokens: n("embed_tokens"),
            pipeline,
            sync,
        });
    }
    println!(
        "| side | run | chunks | mean chunk chars | chunk-text tokens | embedded tokens | wall s | chunks/s | embedded tokens/s | chunk-text tokens/s | peak RSS MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            r.side,
            r.run,
            r.chunks,
            r.chars as f64 / r.chunks.max(1) as f64,
            r.text_tokens,
            r.embed_tokens,
            r.wall,
            r.chunks as f64 / r.wall,
            r.embed_tokens as f64 / r.wall,
            r.text_tokens as f64 / r.wall,
            r.rss_kib as f64 / 1024.0
        );
    }
    for (r, p) in rows.iter().filter_map(|r| r.pipeline.map(|p| (r, p))) {
        println!(
            "swiftide run {}: pipeline.run() alone {:.1} s ({:.0} embedded tokens/s); the rest of its wall time is process start, model load and writing the texts out",
            r.run,
            p,
            r.embed_tokens as f64 / p
        );
    }
    for (r, p) in rows.iter().filter_map(|r| r.sync.map(|p| (r, p))) {
        println!(
            "freshet run {}: the sync's own duration_ms {:.1} s ({:.0} embedded tokens/s); the rest of its wall time is process start, config and model load, opening the store",
            r.run,
            p,
            r.embed_tokens as f64 / p
        );
    }
    let best = |side: &str, f: &dyn Fn(&Row) -> f64| {
        rows.iter()
            .filter(|r| r.side == side)
            .map(f)
            .fold(f64::NAN, f64::max)
    };
    let mean = |side: &str, f: &dyn Fn(&Row) -> f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.side == side).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let tps = |r: &Row| r.embed_tokens as f64 / r.wall;
    let text_tps = |r: &Row| r.text_tokens as f64 / r.wall;
    let cps = |r: &Row| r.chunks as f64 / r.wall;
    let rss = |r: &Row| r.rss_kib as f64;
    if rows.iter().any(|r| r.side == "freshet") && rows.iter().any(|r| r.side == "swiftide") {
        println!();
        println!("Ratios freshet / swiftide (mean over runs; best run in brackets):");
        for (name, f) in [
            ("embedded tokens/s", &tps as &dyn Fn(&Row) -> f64),
            ("chunk-text tokens/s", &text_tps),
            ("chunks/s", &cps),
        ] {
            println!(
                "  {name}: {:.2}x [{:.2}x]",
                mean("freshet", f) / mean("swiftide", f),
                best("freshet", f) / best("swiftide", f)
            );
        }
        let mem = mean("freshet", &rss) / mean("swiftide", &rss);
        println!("  peak RSS: {mem:.3} of swiftide's (1/{:.1})", 1.0 / mem);
        let speed = mean("freshet", &tps) / mean("swiftide", &tps);
        println!(
            "Target (>= 1.5x real tokens/s at <= 1/4 of the peak memory): {} ({:.2}x, {:.3})",
            if speed >= 1.5 && mem <= 0.25 { "met" } else { "NOT met" },
            speed,
            mem
        );
    }
    Ok(())
}

/// freshet's examples/bench.rs `generate_corpus`, copied: deterministic Markdown
/// documents of varied length.
fn generate_corpus(dir: &Path, docs: usize) -> anyhow::Result<()> {
    if dir.join(".complete").is_file() {
        return Ok(());
    }
    const WORDS: &[&str] = &[
        "system", "data", "index", "query", "vector", "model", "river", "mountain", "policy",
        "customer", "order", "invoice", "battery", "engine", "bridge", "garden", "recipe",
        "protein", "network", "server", "latency", "storage", "archive", "contract", "budget",
        "weather", "forest", "planet", "signal", "sensor", "market", "language", "history",
        "music", "theory", "method", "result", "process", "factory", "vehicle", "harbor", "the",
        "a", "of", "and", "to", "in", "is", "that", "for", "with", "on", "as", "by", "quickly",
        "carefully", "rarely", "measures", "builds", "explains", "improves", "reduces",
        "connects", "describes", "stores", "returns", "changes", "supports", "large", "small",
        "recent", "stable", "complex", "simple", "open", "private",
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
