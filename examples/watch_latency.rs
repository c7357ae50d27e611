//! Watch-latency benchmark: how long from a file write until a query returns the new text,
//! for one small document on an idle watcher and while other files change at a sustained
//! rate. Prints figures and the ratio to the goal; asserts nothing.
//!
//! Run: `cargo run --example watch_latency -- [--rate 200] [--seconds 30] [--files 500]`
//!
//! Goal: p95 <= debounce window + 1.5 x the time the watcher takes to process one document
//! alone, and no growth of lag under the sustained load (the last third of the run is no
//! slower than the first).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use freshet::config::{Config, FolderConfig, SourceConfig};
use freshet::index::LockMode;
use freshet::pipeline::RunReport;
use freshet::watch::WatchOptions;
use freshet::Index;

const WORDS: &[&str] = &[
    "river", "ledger", "invoice", "harbour", "granite", "orchid", "lantern", "compiler", "meadow",
    "glacier", "refund", "shipment", "pigeon", "violin", "tundra", "saffron", "beacon", "quartz",
    "monsoon", "kettle", "archive", "falcon", "canyon", "ember",
];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sentence(seed: u64, words: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, latencies: &mut [f64]) -> (f64, f64) {
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p95) = (percentile(latencies, 50.0), percentile(latencies, 95.0));
    println!(
        "{name:<34} n={:<4} p50 {:>7.1} ms   p95 {:>7.1} ms   max {:>7.1} ms",
        latencies.len(),
        p50,
        p95,
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    (p50, p95)
}

/// Writes a probe document with a fresh marker and polls real queries until the top hit
/// is that document with the new text. Returns milliseconds.
async fn probe(index: &Index, root: &Path, n: u64) -> anyhow::Result<f64> {
    let marker = format!("probe{n}x");
    let text = format!(
        "# Probe {n}\n\nThe {marker} {} checklist.\n",
        sentence(10_000 + n, 8)
    );
    let query = text.clone();
    let path = root.join("probe.md");
    let tmp = root.join(".probe.md.tmp");
    let started = Instant::now();
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &path)?;
    // The query is embedded once and searched repeatedly: polling must not steal the
    // embedder from the watcher it is measuring.
    let vector = {
        let embedder = index.embedder.clone();
        tokio::task::spawn_blocking(move || embedder.embed(&[query.as_str()]))
            .await??
            .pop()
            .unwrap_or_default()
    };
    let deadline = started + Duration::from_secs(120);
    loop {
        let hits = index
            .store
            .search(&freshet::store::Query::dense(&vector, 1, None))
            .await?;
        let fresh = hits.first().is_some_and(|hit| {
            hit.payload.get("doc_key").and_then(|v| v.as_str()) == Some("probe.md")
                && hit
                    .payload
                    .get("text")
                    .and_then(|v| v.as_str())
                    .is_some_and(|t| t.contains(&marker))
        });
        if fresh {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(Instant::now() < deadline, "probe {n} never became visible");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 200);
    let seconds = arg("--seconds", 30);
    let files = arg("--files", 500);
    let probes = arg("--probes", 30);

    let dir = tempfile::tempdir()?;
    let root = dir.path().join("docs");
    std::fs::create_dir_all(root.join("busy"))?;
    for i in 0..files {
        std::fs::write(
            root.join("busy").join(format!("note-{i}.md")),
            format!("# Note {i}\n\n{}\n", sentence(i, 24)),
        )?;
    }
    let config = Config {
        data_dir: dir.path().join("data"),
        sources: vec![SourceConfig::Folder(FolderConfig {
            id: "docs".into(),
            path: root.clone(),
            include: vec![],
            exclude: vec![],
            respect_gitignore: true,
            include_hidden: false,
            partitions: 1,
        })],
        ..Config::default()
    };
    let debounce_ms = config.watch.debounce_ms as f64;
    let index = Arc::new(
        Index::open_for_sync(config, LockMode::FailIfBusy)
            .await
            .context("open index (run scripts/provision first)")?,
    );

    // Round durations of rounds that indexed exactly one document: the time to process
    // one document alone, as the watcher does it (scoped walk, pipeline, commit).
    let single_doc_rounds = Arc::new(Mutex::new(Vec::<f64>::new()));
    // Every round: (documents it took, milliseconds it ran).
    let all_rounds = Arc::new(Mutex::new(Vec::<(u64, u64, u64, u64)>::new()));
    let sink = {
        let single = single_doc_rounds.clone();
        let all = all_rounds.clone();
        Arc::new(move |report: &RunReport| {
            let t = &report.totals;
            if t.added + t.updated == 1 && t.deleted == 0 && t.scanned == 1 {
                single.lock().unwrap().push(report.duration_ms as f64);
            }
            all.lock()
                .unwrap()
                .push((t.scanned, report.duration_ms, t.embed_ms, t.commit_ms));
        })
    };
    let options = WatchOptions {
        on_report: Some(sink),
        ..WatchOptions::default()
    };
    let catch_up = Instant::now();
    let watcher = tokio::spawn({
        let index = index.clone();
        let options = options.clone();
        async move { index.watch(&options).await }
    });
    while !options.health.ready.load(Ordering::SeqCst) {
        anyhow::ensure!(!watcher.is_finished(), "the watcher stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "catch-up: {files} documents in {:.1} s; debounce window {debounce_ms} ms",
        catch_up.elapsed().as_secs_f64()
    );

    // Idle: one small document at a time.
    let mut idle = Vec::new();
    for n in 0..probes {
        idle.push(probe(&index, &root, n).await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut alone = single_doc_rounds.lock().unwrap().clone();
    alone.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let one_doc_ms = percentile(&alone, 50.0);
    println!(
        "processing one document alone:     n={:<4} median {one_doc_ms:.1} ms (round: scoped walk, read, chunk, embed, store, ledger)",
        alone.len()
    );
    let (_, idle_p95) = summary("idle watcher, write -> query", &mut idle);
    let goal = debounce_ms + 1.5 * one_doc_ms;

    // Sustained: `rate` file events per second on other files, probes meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = std::thread::spawn({
        let (stop, written, busy) = (stop.clone(), written.clone(), root.join("busy"));
        move || {
            let started = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let i = n % files;
                let path: PathBuf = busy.join(format!("note-{i}.md"));
                let _ = std::fs::write(
                    &path,
                    format!("# Note {i}\n\n{}\n", sentence(n * 7 + 3, 24)),
                );
                written.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            started.elapsed()
        }
    });
    let rounds_before = all_rounds.lock().unwrap().len();
    let load_started = Instant::now();
    let mut timed = Vec::new();
    let mut n = probes;
    while load_started.elapsed() < Duration::from_secs(seconds) {
        let at = load_started.elapsed().as_secs_f64();
        timed.push((at, probe(&index, &root, n).await?));
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let elapsed = writer.join().unwrap();
    let events = written.load(Ordering::SeqCst);
    println!(
        "sustained load: {events} file writes in {:.1} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    {
        let rounds = all_rounds.lock().unwrap();
        let under_load = &rounds[rounds_before..];
        let n = under_load.len().max(1) as f64;
        let docs: u64 = under_load.iter().map(|r| r.0).sum();
        let ms: u64 = under_load.iter().map(|r| r.1).sum();
        let embed_ms: u64 = under_load.iter().map(|r| r.2).sum();
        let commit_ms: u64 = under_load.iter().map(|r| r.3).sum();
        println!(
            "rounds under load: {} rounds, {docs} documents ({:.0}/s), a round: {:.1} documents, {:.0} ms ({:.0} ms embedding, {:.0} ms store and ledger)",
            under_load.len(),
            docs as f64 / elapsed.as_secs_f64(),
            docs as f64 / n,
            ms as f64 / n,
            embed_ms as f64 / n,
            commit_ms as f64 / n,
        );
    }
    let mut all: Vec<f64> = timed.iter().map(|(_, l)| *l).collect();
    let (_, load_p95) = summary(&format!("under {rate} events/s, write -> query"), &mut all);
    let third = seconds as f64 / 3.0;
    let mut first: Vec<f64> = timed
        .iter()
        .filter(|(t, _)| *t < third)
        .map(|(_, l)| *l)
        .collect();
    let mut last: Vec<f64> = timed
        .iter()
        .filter(|(t, _)| *t >= 2.0 * third)
        .map(|(_, l)| *l)
        .collect();
    let (first_p50, _) = summary("  first third of the load", &mut first);
    let (last_p50, _) = summary("  last third of the load", &mut last);

    println!();
    println!("goal: p95 <= debounce + 1.5 x one document = {debounce_ms} + 1.5 x {one_doc_ms:.1} = {goal:.1} ms");
    println!("idle p95 / goal:          {:.2}", idle_p95 / goal);
    println!("under load p95 / goal:    {:.2}", load_p95 / goal);
    println!(
        "lag growth (last third p50 / first third p50): {:.2}",
        last_p50 / first_p50
    );

    options.cancel.cancel();
    watcher.await??;
    Ok(())
}
