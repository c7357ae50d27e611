//! Watch mode with the real model, the real embedded store and real inotify events: a
//! watcher's index equals a fresh sync's after hundreds of random file operations, a
//! dropped event queue is caught by the rescan, and the index is searched while watched.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{points, str_field, Workspace};
use freshet::config::Config;
use freshet::pipeline::SyncOptions;
use freshet::store::{Payload, PointId};
use freshet::watch::WatchOptions;
use freshet::Index;

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "river", "ledger", "invoice", "harbour", "granite", "orchid", "lantern", "compiler", "meadow",
    "glacier", "refund", "shipment", "pigeon", "violin", "tundra", "saffron", "beacon", "quartz",
    "monsoon", "kettle", "archive", "falcon", "canyon", "ember",
];

fn text(rng: &mut Rng, words: usize) -> String {
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push(if i % 12 == 0 { '\n' } else { ' ' });
        }
        out.push_str(WORDS[rng.below(WORDS.len())]);
    }
    out.push('\n');
    out
}

/// Small chunks (so documents have several and shrinking leaves stale ones), a short
/// debounce, no periodic rescan (it would mask missed events), no deletion guard (random
/// deletions of a small tree easily cross 50%).
fn watch_config(ws: &Workspace) -> Config {
    let mut config = ws.config();
    config.chunking.max_tokens = 32;
    config.chunking.overlap_tokens = 0;
    config.watch.debounce_ms = 50;
    config.watch.rescan_interval_s = 0;
    config.pipeline.max_delete_share = 1.0;
    config
}

struct Watcher {
    index: Arc<Index>,
    options: WatchOptions,
    task: tokio::task::JoinHandle<freshet::Result<()>>,
    /// Every round's report, in order.
    reports: Arc<std::sync::Mutex<Vec<freshet::RunReport>>>,
}

impl Watcher {
    async fn start(config: Config) -> Self {
        freshet::telemetry::init_logging(0, false);
        let index = Arc::new(
            Index::open_for_sync(config, freshet::index::LockMode::FailIfBusy)
                .await
                .expect("open index (is the model provisioned? run scripts/provision)"),
        );
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let options = WatchOptions {
            on_report: Some(Arc::new({
                let reports = reports.clone();
                move |report: &freshet::RunReport| {
                    // Round errors explain a failure of these tests; print them.
                    if let Some(error) = &report.error {
                        eprintln!("round failed: {error}");
                    }
                    reports.lock().unwrap().push(report.clone());
                }
            })),
            ..WatchOptions::default()
        };
        let task = tokio::spawn({
            let index = index.clone();
            let options = options.clone();
            async move { index.watch(&options).await }
        });
        let watcher = Self {
            index,
            options,
            task,
            reports,
        };
        watcher
            .wait_for("the catch-up scan", || {
                watcher.options.health.ready.load(Ordering::SeqCst)
            })
            .await;
        watcher
    }

    async fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !done() {
            assert!(!self.task.is_finished(), "the watcher stopped early");
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until no round has finished for `quiet` (after the debounce window).
    async fn settle(&self, quiet: Duration) {
        let rounds = || self.options.health.rounds.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut last = rounds();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = rounds();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet && self.options.live.in_flight() == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the watcher never settled");
        }
    }

    /// Stops the watcher and returns its index's points.
    async fn stop(self) -> (Arc<Index>, BTreeMap<PointId, Payload>) {
        self.options.cancel.cancel();
        self.task.await.unwrap().expect("watch ends cleanly");
        let points = points(&self.index).await;
        (self.index, points)
    }
}

/// What a fresh sync of the corpus, into a new data directory, puts in the store.
async fn fresh_sync_points(ws: &Workspace, config: &Config) -> BTreeMap<PointId, Payload> {
    let mut fresh = config.clone();
    fresh.data_dir = ws.dir.path().join("fresh-data");
    // Its own table or collection on a server store.
    fresh.store = common::StoreKind::of(&config.store).config();
    let index = Index::open_for_sync(fresh, freshet::index::LockMode::FailIfBusy)
        .await
        .unwrap();
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:?}");
    points(&index).await
}

fn assert_same_index(watched: &BTreeMap<PointId, Payload>, fresh: &BTreeMap<PointId, Payload>) {
    let only_watched: Vec<_> = watched
        .iter()
        .filter(|(id, _)| !fresh.contains_key(id))
        .map(|(_, p)| (str_field(p, "doc_key"), p.get("chunk_index").cloned()))
        .collect();
    let only_fresh: Vec<_> = fresh
        .iter()
        .filter(|(id, _)| !watched.contains_key(id))
        .map(|(_, p)| (str_field(p, "doc_key"), p.get("chunk_index").cloned()))
        .collect();
    assert!(
        only_watched.is_empty() && only_fresh.is_empty(),
        "point ids differ: only in the watched index {only_watched:?}; only in a fresh sync {only_fresh:?}"
    );
    for (id, payload) in watched {
        assert_eq!(
            payload,
            &fresh[id],
            "payload of {} differs",
            str_field(payload, "doc_key")
        );
    }
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !entry.file_name().to_string_lossy().starts_with('.') {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let dir = out[i].clone();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                out.push(entry.path());
            }
        }
        i += 1;
    }
    out
}

/// One random file operation of the kinds users and editors perform.
fn random_operation(rng: &mut Rng, root: &Path, counter: &mut usize) -> &'static str {
    let files = files_under(root);
    let dirs = dirs_under(root);
    let new_name = |rng: &mut Rng, counter: &mut usize, dir: &Path| {
        *counter += 1;
        let ext = ["md", "txt"][rng.below(2)];
        dir.join(format!("doc{counter}.{ext}"))
    };
    let pick = rng.below(100);
    if files.len() < 5 || pick < 18 {
        let dir = if rng.below(4) == 0 {
            *counter += 1;
            let dir = dirs[rng.below(dirs.len())].join(format!("dir{counter}"));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        } else {
            dirs[rng.below(dirs.len())].clone()
        };
        let path = new_name(rng, counter, &dir);
        let words = 20 + rng.below(120);
        std::fs::write(path, text(rng, words)).unwrap();
        return "create";
    }
    let file = files[rng.below(files.len())].clone();
    match pick {
        18..=35 => {
            let words = 20 + rng.below(120);
            std::fs::write(&file, text(rng, words)).unwrap();
            "edit"
        }
        36..=45 => {
            let old = std::fs::read_to_string(&file).unwrap_or_default();
            let cut = old
                .char_indices()
                .nth(old.chars().count() / 3)
                .map_or(0, |(i, _)| i);
            std::fs::write(&file, &old[..cut]).unwrap();
            "shrink"
        }
        46..=53 => {
            let target = new_name(rng, counter, file.parent().unwrap());
            std::fs::rename(&file, target).unwrap();
            "rename"
        }
        54..=63 => {
            let dir = dirs[rng.below(dirs.len())].clone();
            let target = dir.join(file.file_name().unwrap());
            if !target.exists() {
                std::fs::rename(&file, target).unwrap();
            }
            "move"
        }
        64..=75 => {
            std::fs::remove_file(&file).unwrap();
            "delete"
        }
        76..=89 => {
            // An editor's save: write a hidden temp file, then rename it over the original.
            let temp = file.with_file_name(format!(
                ".{}.swp",
                file.file_name().unwrap().to_string_lossy()
            ));
            let words = 20 + rng.below(120);
            std::fs::write(&temp, text(rng, words)).unwrap();
            std::fs::rename(&temp, &file).unwrap();
            "atomic save"
        }
        90..=94 if dirs.len() > 1 => {
            // Move a whole directory somewhere else (not into itself).
            let dir = dirs[1 + rng.below(dirs.len() - 1)].clone();
            let targets: Vec<&PathBuf> = dirs.iter().filter(|d| !d.starts_with(&dir)).collect();
            let target = targets[rng.below(targets.len())].join(format!("moved{counter}"));
            *counter += 1;
            std::fs::rename(&dir, target).unwrap();
            "move directory"
        }
        95..=99 if dirs.len() > 1 => {
            let dir = dirs[1 + rng.below(dirs.len() - 1)].clone();
            std::fs::remove_dir_all(&dir).unwrap();
            "delete directory"
        }
        _ => {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text(rng, 15).as_bytes()))
                .unwrap();
            "append"
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_index_equals_a_fresh_sync_after_random_operations() {
    watch_equals_batch(common::StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_index_equals_a_fresh_sync_after_random_operations_on_pgvector() {
    if let Some(kind) = common::StoreKind::pgvector("watch equals batch") {
        watch_equals_batch(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_index_equals_a_fresh_sync_after_random_operations_on_qdrant() {
    if let Some(kind) = common::StoreKind::qdrant("watch equals batch") {
        watch_equals_batch(kind).await;
    }
}

async fn watch_equals_batch(kind: common::StoreKind) {
    let ws = Workspace::empty_on(kind);
    let mut rng = Rng(0x5eed_f00d_cafe_0001);
    let mut counter = 0;
    for _ in 0..20 {
        random_operation(&mut rng, &ws.corpus(), &mut counter);
    }
    let config = watch_config(&ws);
    let watcher = Watcher::start(config.clone()).await;

    let mut kinds = BTreeMap::new();
    for i in 0..240 {
        let kind = random_operation(&mut rng, &ws.corpus(), &mut counter);
        *kinds.entry(kind).or_insert(0) += 1;
        // Bursts (no pause) mixed with pauses longer than the debounce window, so both
        // coalesced and separate rounds happen.
        match i % 20 {
            0..=11 => {}
            12..=17 => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => tokio::time::sleep(Duration::from_millis(120)).await,
        }
    }
    eprintln!("operations: {kinds:?}");
    for kind in [
        "create",
        "edit",
        "shrink",
        "rename",
        "move",
        "delete",
        "atomic save",
    ] {
        assert!(kinds.get(kind).copied().unwrap_or(0) > 0, "no {kind} ran");
    }
    watcher.settle(Duration::from_millis(1500)).await;
    let rounds = watcher.options.health.rounds.load(Ordering::SeqCst);
    let (index, watched) = watcher.stop().await;
    let verify = index.verify().await.unwrap();
    assert!(verify.is_clean(), "{verify:?}");
    drop(index);

    let fresh = fresh_sync_points(&ws, &config).await;
    assert!(!fresh.is_empty());
    eprintln!(
        "{} points, {} documents, {rounds} watch rounds",
        fresh.len(),
        files_under(&ws.corpus()).len()
    );
    assert_same_index(&watched, &fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_the_os_dropped_are_found_by_the_rescan() {
    let ws = Workspace::empty();
    let mut rng = Rng(42);
    for name in ["keep.md", "edit.md", "remove.md", "sub/move.md"] {
        let path = ws.corpus().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text(&mut rng, 60)).unwrap();
    }
    let config = watch_config(&ws);
    let watcher = Watcher::start(config.clone()).await;

    // What a kernel does once its event queue overflowed: the events are gone.
    watcher.options.control.drop_events(true);
    std::fs::write(ws.corpus().join("edit.md"), text(&mut rng, 90)).unwrap();
    std::fs::remove_file(ws.corpus().join("remove.md")).unwrap();
    std::fs::write(ws.corpus().join("new.md"), text(&mut rng, 40)).unwrap();
    std::fs::create_dir_all(ws.corpus().join("other")).unwrap();
    std::fs::rename(
        ws.corpus().join("sub/move.md"),
        ws.corpus().join("other/move.md"),
    )
    .unwrap();
    watcher.settle(Duration::from_millis(500)).await;
    let before = points(&watcher.index).await;
    assert!(
        before
            .values()
            .any(|p| str_field(p, "doc_key") == "remove.md"),
        "the dropped events must not have been seen (or this test proves nothing)"
    );

    // The overflow's answer: a full rescan.
    watcher.options.control.drop_events(false);
    let rounds_before = watcher.options.health.rounds.load(Ordering::SeqCst);
    watcher.options.control.request_rescan();
    watcher
        .wait_for("the rescan", || {
            watcher.options.health.rounds.load(Ordering::SeqCst) > rounds_before
        })
        .await;
    watcher.settle(Duration::from_millis(500)).await;
    let (index, watched) = watcher.stop().await;
    drop(index);
    assert!(!watched
        .values()
        .any(|p| str_field(p, "doc_key") == "remove.md"));
    let fresh = fresh_sync_points(&ws, &config).await;
    assert_same_index(&watched, &fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renames_and_moves_while_watching_re_embed_nothing() {
    let ws = Workspace::with_sample_corpus();
    let watcher = Watcher::start(ws.config()).await;
    let caught_up = watcher.reports.lock().unwrap().len();

    std::fs::rename(
        ws.corpus().join("returns-policy.txt"),
        ws.corpus().join("refunds.txt"),
    )
    .unwrap();
    std::fs::create_dir_all(ws.corpus().join("archive/2026")).unwrap();
    std::fs::rename(
        ws.corpus().join("guides/japan-rail.md"),
        ws.corpus().join("archive/2026/japan-rail.md"),
    )
    .unwrap();
    watcher.settle(Duration::from_millis(800)).await;

    let reports: Vec<_> = watcher.reports.lock().unwrap()[caught_up..].to_vec();
    let embedded: u64 = reports.iter().map(|r| r.totals.chunks_embedded).sum();
    let reused: u64 = reports.iter().map(|r| r.totals.chunks_reused).sum();
    let deleted: u64 = reports.iter().map(|r| r.totals.deleted).sum();
    assert_eq!(
        embedded, 0,
        "a rename or move re-embedded chunks: {reports:#?}"
    );
    assert!(reused > 0, "{reports:#?}");
    assert_eq!(deleted, 2, "{reports:#?}");
    let (_, watched) = watcher.stop().await;
    let keys: std::collections::BTreeSet<&str> =
        watched.values().map(|p| str_field(p, "doc_key")).collect();
    assert!(keys.contains("refunds.txt"), "{keys:?}");
    assert!(keys.contains("archive/2026/japan-rail.md"), "{keys:?}");
    assert!(!keys.contains("returns-policy.txt"), "{keys:?}");
    assert!(!keys.contains("guides/japan-rail.md"), "{keys:?}");
}
