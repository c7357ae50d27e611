//! Several real `freshet` processes sharing one PostgreSQL ledger and one pgvector store:
//! `sync` workers split the units and embed each document once; `watch` workers split the
//! units, take over a killed worker's, and a paused worker that lost its units cannot
//! commit when it wakes; partitions of a table can be re-cut without re-embedding.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{shared_ledger, shared_ledger_config, signal, store_toml, wait_exit, StoreKind};
use freshet::config::{Config, LedgerConfig, StoreConfig};

/// A set of workers' shared setting: a temp dir, the ledger schema and the store table.
struct Cluster {
    dir: tempfile::TempDir,
    ledger: LedgerConfig,
    store: StoreConfig,
}

impl Cluster {
    fn new(takeover_s: u64) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ledger: shared_ledger_config(takeover_s),
            store: StoreKind::Pgvector.config(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `config.toml`: these sources, the shared ledger and store, fast debouncing.
    fn write_config(&self, sources: &str) -> PathBuf {
        let path = self.path("config.toml");
        let toml = format!(
            "data_dir = \"data\"\n{sources}\n[watch]\ndebounce_ms = 100\nrescan_interval_s = 0\n\n[ledger]\nurl_env = \"{}\"\nschema = \"{}\"\nlease_takeover_s = {}\n\n{}",
            self.ledger.url_env.as_deref().unwrap(),
            self.ledger.schema,
            self.ledger.lease_takeover_s,
            store_toml(&self.store)
        );
        std::fs::write(&path, toml).unwrap();
        path
    }

    fn config(&self) -> Config {
        let mut config = Config::load(&self.path("config.toml")).unwrap();
        config.resolve_paths(self.dir.path());
        config
    }

    /// A worker process: `freshet <args>` with this cluster's config, its own data
    /// directory (as on its own host), logs in `worker-<name>.log`.
    fn spawn(&self, name: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.path(&format!("worker-{name}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_freshet"))
            .current_dir(self.dir.path())
            .env_remove("FRESHET_CONFIG")
            .args([
                "--config",
                "config.toml",
                "--data-dir",
                &format!("data-{name}"),
                "-v",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("worker-{name}.log"))).unwrap_or_default()
    }

    async fn ledger(
        &self,
    ) -> (
        freshet::ledger::Ledger,
        std::sync::Arc<dyn freshet::ledger::Leases>,
    ) {
        freshet::ledger::open(&self.config()).await.unwrap()
    }
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}

fn write_doc(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Distinct prose per document, so that no chunk is reused across documents.
fn prose(n: usize, version: &str) -> String {
    format!(
        "# Note {n} ({version})\n\nThis is note number {n}, version {version}. It records how crew {n} \
         inspected turbine blade {} on day {} and found wear pattern {} near the root.\n",
        n * 7 + 3,
        n * 13 % 31,
        n % 5
    )
}

/// Every point's identity and content in the store: (doc_key, chunk_index) -> text.
async fn contents(config: &Config) -> BTreeMap<(String, u64), String> {
    let index = freshet::Index::open_for_query(config.clone())
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    let mut offset = None;
    loop {
        let (page, next) = index.store.scroll(offset, 512, None, false).await.unwrap();
        for point in page {
            let p = &point.payload;
            out.insert(
                (
                    p["doc_key"].as_str().unwrap().to_string(),
                    p["chunk_index"].as_u64().unwrap(),
                ),
                p["text"].as_str().unwrap().to_string(),
            );
        }
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    out
}

/// What a clean single-process sync of the same sources builds (a new ledger schema and
/// table), to compare a cluster's index with.
async fn clean_sync(cluster: &Cluster) -> BTreeMap<(String, u64), String> {
    let mut config = cluster.config();
    config.ledger = shared_ledger_config(10);
    config.store = StoreKind::Pgvector.config();
    let index = freshet::Index::open_for_sync(config.clone(), freshet::index::LockMode::FailIfBusy)
        .await
        .unwrap();
    let report = index.sync(&Default::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    drop(index);
    contents(&config).await
}

/// `freshet verify` through the binary: 0 when the ledger and the store agree.
fn verify(cluster: &Cluster) {
    let output = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(cluster.dir.path())
        .args(["--config", "config.toml", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn folder_sources(root: &str, count: usize, partitions: u32) -> String {
    (0..count)
        .map(|i| {
            format!(
                "[[sources]]\ntype = \"folder\"\nid = \"s{i}\"\npath = \"{root}/s{i}\"\npartitions = {partitions}\n\n"
            )
        })
        .collect()
}

/// Sum of a counter over the runs recorded in the ledger.
fn run_total(runs: &[freshet::ledger::RunRecord], key: &str) -> u64 {
    runs.iter()
        .filter_map(|r| r.stats.as_ref())
        .map(|s| s["totals"][key].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sync_workers_split_six_sources_and_embed_each_document_once() {
    if !shared_ledger("three sync workers") {
        return;
    }
    let cluster = Cluster::new(10);
    for s in 0..6 {
        for n in 0..4 {
            write_doc(
                &cluster.path("corpus"),
                &format!("s{s}/note-{n}.md"),
                &prose(s * 10 + n, "a"),
            );
        }
    }
    cluster.write_config(&folder_sources("corpus", 6, 1));
    let mut workers: Vec<Child> = (0..3)
        .map(|i| cluster.spawn(&i.to_string(), &["sync"]))
        .collect();
    for (i, worker) in workers.iter_mut().enumerate() {
        let status = wait_exit(worker, Duration::from_secs(300));
        assert!(
            status.success(),
            "worker {i}: {status}\n{}",
            cluster.log(&i.to_string())
        );
    }

    let (ledger, _) = cluster.ledger().await;
    let runs = ledger.recent_runs(100).await.unwrap();
    assert_eq!(runs.len(), 3, "one run per worker: {runs:#?}");
    let mut synced: Vec<String> = Vec::new();
    for run in &runs {
        assert_eq!(run.status, "completed", "{run:#?}");
        let stats = run.stats.as_ref().unwrap();
        for source in stats["sources"].as_array().unwrap() {
            synced.push(source["source_id"].as_str().unwrap().to_string());
        }
    }
    synced.sort();
    let expected: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    assert_eq!(synced, expected, "every unit synced by exactly one worker");
    let chunks: i64 = ledger
        .summaries()
        .await
        .unwrap()
        .iter()
        .map(|s| s.chunks)
        .sum();
    assert_eq!(
        ledger
            .summaries()
            .await
            .unwrap()
            .iter()
            .map(|s| s.documents)
            .sum::<i64>(),
        24
    );
    assert_eq!(
        run_total(&runs, "chunks_embedded"),
        chunks as u64,
        "each chunk embedded exactly once across the workers"
    );
    let busy = runs
        .iter()
        .filter(|r| run_total(std::slice::from_ref(r), "chunks_embedded") > 0)
        .count();
    eprintln!(
        "units per worker: {:?}",
        runs.iter()
            .map(|r| r.stats.as_ref().unwrap()["sources"]
                .as_array()
                .unwrap()
                .len())
            .collect::<Vec<_>>()
    );
    assert!(busy >= 2, "the work was split: {busy} workers embedded");
    verify(&cluster);
}

/// The corpus a watch test changes: 36 notes over one folder source cut in 6 partitions.
fn watched_corpus(cluster: &Cluster, partitions: u32) {
    for n in 0..36 {
        write_doc(
            &cluster.path("corpus/docs"),
            &format!("note-{n}.md"),
            &prose(n, "a"),
        );
    }
    cluster.write_config(&format!(
        "[[sources]]\ntype = \"folder\"\nid = \"docs\"\npath = \"corpus/docs\"\npartitions = {partitions}\n"
    ));
}

/// Whether the store holds exactly these documents' texts, each containing its marker.
async fn searchable(config: &Config, markers: &BTreeMap<String, Option<String>>) -> bool {
    let Ok(index) = freshet::Index::open_for_query(config.clone()).await else {
        return false;
    };
    for (key, marker) in markers {
        let filter = freshet::store::Filter::default().field("doc_key", key);
        let Ok((points, _)) = index.store.scroll(None, 16, Some(filter), false).await else {
            return false;
        };
        let ok = match marker {
            Some(marker) => points.iter().any(|p| {
                p.payload["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains(marker.as_str())
            }),
            None => points.is_empty(),
        };
        if !ok {
            return false;
        }
    }
    true
}

async fn all_units_held_live(cluster: &Cluster, units: usize) -> bool {
    let (_, leases) = cluster.ledger().await;
    let holders = leases.holders().await.unwrap_or_default();
    holders.iter().filter(|h| h.live).count() == units
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_workers_take_over_a_killed_worker_and_match_a_clean_sync() {
    if !shared_ledger("watch takeover") {
        return;
    }
    let takeover = 4;
    let cluster = Cluster::new(takeover);
    watched_corpus(&cluster, 6);
    let config = cluster.config();
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let mut workers: Vec<Child> = (0..3)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", ports[i]);
            cluster.spawn(&i.to_string(), &["watch", "--metrics-addr", &addr])
        })
        .collect();
    wait_until(
        "6 units held and caught up",
        Duration::from_secs(240),
        || async {
            if !all_units_held_live(&cluster, 6).await {
                return false;
            }
            let (ledger, _) = cluster.ledger().await;
            let ids = freshet::units::ids(&config);
            let states = ledger.unit_states().await.unwrap();
            ids.iter().all(|id| {
                states
                    .iter()
                    .any(|s| &s.unit == id && s.scanned_collection.is_some())
            })
        },
    )
    .await;
    let (_, leases) = cluster.ledger().await;
    let holders = leases.holders().await.unwrap();
    let per_worker: BTreeMap<i64, usize> = holders.iter().fold(BTreeMap::new(), |mut m, h| {
        *m.entry(h.pid).or_default() += 1;
        m
    });
    eprintln!("units per worker pid: {per_worker:?}");
    assert_eq!(
        per_worker.len(),
        3,
        "every worker holds units: {holders:#?}"
    );
    let victim = workers[0].id() as i64;
    let victim_units: Vec<String> = holders
        .iter()
        .filter(|h| h.pid == victim)
        .map(|h| h.unit.clone())
        .collect();

    // Changes while all three run, then kill -9 one, then changes in its units.
    let mut markers: BTreeMap<String, Option<String>> = BTreeMap::new();
    let docs = cluster.path("corpus/docs");
    for n in 0..6 {
        write_doc(&docs, &format!("note-{n}.md"), &prose(n, "before-kill"));
        markers.insert(format!("note-{n}.md"), Some("before-kill".into()));
    }
    std::fs::remove_file(docs.join("note-6.md")).unwrap();
    markers.insert("note-6.md".into(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    let killed = Instant::now();
    for n in 10..36 {
        let key = format!("note-{n}.md");
        let unit = freshet::units::all(&config)
            .into_iter()
            .find(|(_, u)| u.partition.is_some_and(|p| p.contains(&key)))
            .unwrap()
            .1;
        if victim_units.contains(&unit.id) {
            write_doc(&docs, &key, &prose(n, "after-kill"));
            markers.insert(key, Some("after-kill".into()));
        }
    }
    write_doc(&docs, "new-after-kill.md", &prose(99, "after-kill"));
    markers.insert("new-after-kill.md".into(), Some("after-kill".into()));
    let waited = wait_until(
        "every change searchable after the kill",
        Duration::from_secs(180),
        || searchable(&config, &markers),
    )
    .await;
    eprintln!(
        "kill -9 -> every change searchable: {:.1}s (lease_takeover_s = {takeover}, debounce 0.1s; includes embedding the changes)",
        killed.elapsed().as_secs_f64()
    );
    let _ = waited;
    wait_until(
        "the victim's units taken over",
        Duration::from_secs(30),
        || all_units_held_live(&cluster, 6),
    )
    .await;
    // The survivors' metrics: all six units held between them, and the takeovers counted
    // (the gauge follows the leases at the next balancing tick, within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metric = |port: u16, name: &str| -> f64 {
        let (_, body) = common::http_get(port, "/metrics").expect("metrics served");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let held: f64 = ports[1..]
        .iter()
        .map(|&p| metric(p, "freshet_units_held"))
        .sum();
    let takeovers: f64 = ports[1..]
        .iter()
        .map(|&p| metric(p, "freshet_lease_takeovers_total"))
        .sum();
    assert_eq!(held, 6.0, "units held by the survivors");
    assert!(
        takeovers >= victim_units.len() as f64,
        "takeovers counted: {takeovers}"
    );
    let lag: f64 = ports[1..]
        .iter()
        .map(|&p| metric(p, "freshet_unit_lag_seconds"))
        .sum();
    assert!(lag > 0.0, "lag per unit is exported");
    for worker in &mut workers[1..] {
        signal(worker, "-TERM");
        assert!(wait_exit(worker, Duration::from_secs(60)).success());
    }
    let log = cluster.log("1") + &cluster.log("2");
    assert!(
        log.contains("took over a unit"),
        "a takeover was logged:\n{log}"
    );
    verify(&cluster);
    assert_eq!(
        contents(&config).await,
        clean_sync(&cluster).await,
        "the cluster's index equals a clean single-process sync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_that_lost_its_unit_cannot_commit_when_it_wakes() {
    if !shared_ledger("SIGSTOP fencing") {
        return;
    }
    let takeover = 3;
    let cluster = Cluster::new(takeover);
    watched_corpus(&cluster, 1);
    let config = cluster.config();
    let mut first = cluster.spawn("first", &["watch"]);
    wait_until(
        "the first worker holds the unit",
        Duration::from_secs(120),
        || all_units_held_live(&cluster, 1),
    )
    .await;
    let mut second = cluster.spawn("second", &["watch"]);
    // A burst of work, so that the first worker is in the middle of it when paused.
    let docs = cluster.path("corpus/docs");
    for n in 0..36 {
        write_doc(&docs, &format!("note-{n}.md"), &prose(n, "burst"));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&first, "-STOP");
    let paused = Instant::now();
    let second_pid = second.id() as i64;
    wait_until(
        "the second worker takes the unit over",
        Duration::from_secs(60),
        || async {
            let (_, leases) = cluster.ledger().await;
            leases
                .holders()
                .await
                .unwrap_or_default()
                .iter()
                .any(|h| h.live && h.pid == second_pid)
        },
    )
    .await;
    eprintln!(
        "paused -> unit taken over: {:.1}s (lease_takeover_s = {takeover})",
        paused.elapsed().as_secs_f64()
    );
    let mut markers = BTreeMap::new();
    for n in 0..36 {
        let version = if n % 2 == 0 {
            "after-takeover"
        } else {
            "burst"
        };
        if n % 2 == 0 {
            write_doc(&docs, &format!("note-{n}.md"), &prose(n, version));
        }
        markers.insert(format!("note-{n}.md"), Some(version.to_string()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&first, "-CONT");
    wait_until(
        "the takeover's changes searchable",
        Duration::from_secs(180),
        || searchable(&config, &markers),
    )
    .await;
    // Time for the woken worker to try (and fail) whatever it was doing.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        searchable(&config, &markers).await,
        "the woken worker overwrote newer content"
    );
    for worker in [&mut first, &mut second] {
        signal(worker, "-TERM");
        assert!(wait_exit(worker, Duration::from_secs(60)).success());
    }
    let log = cluster.log("first");
    for line in log.lines().filter(|l| {
        l.contains("lease")
            || l.contains("lost")
            || l.contains("took it over")
            || l.contains("no longer holds")
    }) {
        eprintln!("paused worker: {line}");
    }
    assert!(
        log.contains("lease session to the shared ledger died")
            || log.contains("no longer holds the unit")
            || log.contains("took it over"),
        "the paused worker learnt it lost the unit:\n{log}"
    );
    verify(&cluster);
    assert_eq!(contents(&config).await, clean_sync(&cluster).await);
}

/// The table lives in the ledger's database: the workers inherit its URL variable.
const SQL_URL_ENV: &str = common::LEDGER_URL_ENV;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_splits_over_workers_and_recutting_embeds_nothing() {
    if !shared_ledger("partitioned table") {
        return;
    }
    let cluster = Cluster::new(10);
    let table = common::unique_name();
    let pool = sqlx::PgPool::connect(&std::env::var(SQL_URL_ENV).unwrap())
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, title TEXT, body TEXT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    for id in 0..60 {
        sqlx::query(&format!("INSERT INTO {table} VALUES ($1, $2, $3)"))
            .bind(id)
            .bind(format!("Row {id}"))
            .bind(prose(id as usize, "row"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let sources = |partitions: u32| {
        format!(
            "[[sources]]\ntype = \"sql\"\nid = \"rows\"\nurl_env = \"{SQL_URL_ENV}\"\ntable = \"{table}\"\nkey = [\"id\"]\ntext = \"{{title}}\\n\\n{{body}}\"\npartitions = {partitions}\n"
        )
    };
    cluster.write_config(&sources(4));
    let spawn = |name: &str| cluster.spawn(name, &["sync"]);
    let mut workers = [spawn("a"), spawn("b")];
    for (name, worker) in ["a", "b"].iter().zip(workers.iter_mut()) {
        let status = wait_exit(worker, Duration::from_secs(300));
        assert!(status.success(), "{name}: {}", cluster.log(name));
    }
    let (ledger, _) = cluster.ledger().await;
    let runs = ledger.recent_runs(10).await.unwrap();
    let mut units: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.stats.as_ref().unwrap()["sources"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|s| s["source_id"].as_str().unwrap().to_string())
        .collect();
    units.sort();
    assert_eq!(units, ["rows#0/4", "rows#1/4", "rows#2/4", "rows#3/4"]);
    let summary = &ledger.summaries().await.unwrap()[0];
    assert_eq!(summary.documents, 60);
    assert_eq!(run_total(&runs, "chunks_embedded"), summary.chunks as u64);
    let before = contents(&cluster.config()).await;

    // Eight partitions instead of four: every row is in a new unit, none is re-embedded.
    cluster.write_config(&sources(8));
    let mut again = spawn("c");
    assert!(
        wait_exit(&mut again, Duration::from_secs(300)).success(),
        "{}",
        cluster.log("c")
    );
    let runs = ledger.recent_runs(1).await.unwrap();
    let totals = &runs[0].stats.as_ref().unwrap()["totals"];
    assert_eq!(totals["chunks_embedded"], 0, "{totals:#}");
    assert_eq!(
        (
            totals["added"].as_u64(),
            totals["updated"].as_u64(),
            totals["deleted"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{totals:#}"
    );
    assert_eq!(
        runs[0].stats.as_ref().unwrap()["sources"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    assert_eq!(contents(&cluster.config()).await, before);
    let _ = BTreeSet::<()>::new();
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}
