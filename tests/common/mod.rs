//! Shared helpers for integration tests: a copy of the sample corpus in a temp dir, an
//! index over it with the real model and a real store (the embedded engine, or a
//! pgvector or Qdrant server named by the environment), and readers for what the store
//! holds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use freshet::config::{
    Config, FolderConfig, PgvectorConfig, QdrantConfig, SourceConfig, StoreConfig,
    WriteOrderingConfig,
};
use freshet::index::LockMode;
use freshet::pipeline::{CommitStep, FaultHook, RunReport, SyncOptions};
use freshet::store::{Payload, PointId};
use freshet::Index;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The pgvector server the tests use (`scripts/test` starts one and sets it).
pub const PGVECTOR_URL_ENV: &str = "FRESHET_TEST_PGVECTOR_URL";
/// A Qdrant server's gRPC URL, and its API key if it wants one.
pub const QDRANT_URL_ENV: &str = "FRESHET_TEST_QDRANT_URL";
pub const QDRANT_KEY_ENV: &str = "FRESHET_TEST_QDRANT_API_KEY";

/// A store kind under test; each workspace gets its own collection (or table) in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Pgvector,
    Qdrant,
}

/// A name no other test uses: tests run in parallel against one server.
pub fn unique_name() -> String {
    format!("ft_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

impl StoreKind {
    /// pgvector, when its server is configured. Otherwise prints why the test is skipped
    /// (and fails under `FRESHET_REQUIRE_PGVECTOR=1`, which `scripts/test` sets, so CI never
    /// passes by skipping).
    pub fn pgvector(test: &str) -> Option<Self> {
        if std::env::var(PGVECTOR_URL_ENV).is_ok() {
            return Some(StoreKind::Pgvector);
        }
        if std::env::var("FRESHET_REQUIRE_PGVECTOR").is_ok_and(|v| v == "1") {
            panic!("{test}: {PGVECTOR_URL_ENV} is not set but FRESHET_REQUIRE_PGVECTOR=1 (run scripts/test, which starts pgvector)");
        }
        eprintln!("SKIPPED {test} on pgvector: {PGVECTOR_URL_ENV} is not set (scripts/test starts a local pgvector server and sets it)");
        None
    }

    /// Qdrant, when a server is named. Otherwise prints why the test is skipped.
    pub fn qdrant(test: &str) -> Option<Self> {
        if std::env::var(QDRANT_URL_ENV).is_ok() {
            return Some(StoreKind::Qdrant);
        }
        eprintln!("SKIPPED {test} on Qdrant: {QDRANT_URL_ENV} is not set (no Qdrant server can be installed from a registry here; point it at a server's gRPC port to run this)");
        None
    }

    /// The kind a store config is of.
    pub fn of(store: &StoreConfig) -> Self {
        match store {
            StoreConfig::Embedded => StoreKind::Embedded,
            StoreConfig::Pgvector(_) => StoreKind::Pgvector,
            StoreConfig::Qdrant(_) => StoreKind::Qdrant,
        }
    }

    /// A fresh store config: a new table, collection or (embedded) the data directory.
    pub fn config(self) -> StoreConfig {
        match self {
            StoreKind::Embedded => StoreConfig::Embedded,
            StoreKind::Pgvector => StoreConfig::Pgvector(PgvectorConfig {
                url_env: PGVECTOR_URL_ENV.into(),
                schema: "public".into(),
                table: unique_name(),
                ef_search: 100,
                timeout_s: 30,
                batch_rows: 500,
            }),
            StoreKind::Qdrant => StoreConfig::Qdrant(QdrantConfig {
                url: std::env::var(QDRANT_URL_ENV).unwrap(),
                api_key_env: std::env::var(QDRANT_KEY_ENV)
                    .is_ok()
                    .then(|| QDRANT_KEY_ENV.to_string()),
                ca_cert: None,
                timeout_s: 30,
                collection: unique_name(),
                shard_number: 1,
                replication_factor: 1,
                write_consistency_factor: 1,
                on_disk: false,
                write_ordering: WriteOrderingConfig::Weak,
                batch_points: 64,
                max_request_bytes: 8 << 20,
                max_in_flight: 4,
            }),
        }
    }

    /// The kinds a ledger-protocol test runs on: the embedded engine, plus the servers
    /// that are configured.
    pub fn available(test: &str) -> Vec<Self> {
        let mut kinds = vec![StoreKind::Embedded];
        kinds.extend(Self::pgvector(test));
        kinds.extend(Self::qdrant(test));
        kinds
    }
}

/// `[store]` as TOML, for config files the binary reads.
pub fn store_toml(store: &StoreConfig) -> String {
    #[derive(serde::Serialize)]
    struct Wrapper<'a> {
        store: &'a StoreConfig,
    }
    toml::to_string(&Wrapper { store }).unwrap()
}

/// A temp dir holding `corpus/` (a copy of examples/sample-docs) and `data/`, and the
/// store its index writes to.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub store: StoreConfig,
}

impl Workspace {
    pub fn with_sample_corpus() -> Self {
        Self::with_sample_corpus_on(StoreKind::Embedded)
    }

    pub fn with_sample_corpus_on(kind: StoreKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &repo_root().join("examples/sample-docs"),
            &dir.path().join("corpus"),
        );
        Self {
            dir,
            store: kind.config(),
        }
    }

    pub fn empty() -> Self {
        Self::empty_on(StoreKind::Embedded)
    }

    pub fn empty_on(kind: StoreKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
        Self {
            dir,
            store: kind.config(),
        }
    }

    pub fn corpus(&self) -> PathBuf {
        self.dir.path().join("corpus")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config(&self) -> Config {
        Config {
            data_dir: self.data(),
            sources: vec![SourceConfig::Folder(FolderConfig {
                id: "docs".into(),
                path: self.corpus(),
                include: vec![],
                exclude: vec![],
                respect_gitignore: true,
                include_hidden: false,
                partitions: 1,
            })],
            store: self.store.clone(),
            ..Config::default()
        }
    }

    /// `template` with this workspace's corpus, data directory and store.
    pub fn config_for(ws: &Workspace, template: &Config) -> Config {
        let mut config = template.clone();
        config.data_dir = ws.data();
        config.store = ws.store.clone();
        for source in &mut config.sources {
            if let SourceConfig::Folder(folder) = source {
                folder.path = ws.corpus();
            }
        }
        config
    }

    pub async fn open(&self) -> Index {
        self.open_with(self.config()).await
    }

    pub async fn open_with(&self, config: Config) -> Index {
        Index::open_for_sync(config, LockMode::FailIfBusy)
            .await
            .expect("open index (is the model provisioned? run scripts/provision)")
    }

    pub async fn sync(&self) -> RunReport {
        let index = self.open().await;
        index.sync(&SyncOptions::default()).await.unwrap()
    }
}

/// Every point in the store, by id, with its payload minus the per-run timestamp.
pub async fn points(index: &Index) -> BTreeMap<PointId, Payload> {
    let mut out = BTreeMap::new();
    let mut offset = None;
    loop {
        let (page, next) = index.store.scroll(offset, 256, None, false).await.unwrap();
        for mut point in page {
            point.payload.remove("indexed_at");
            out.insert(point.id, point.payload);
        }
        match next {
            Some(next) => offset = Some(next),
            None => break,
        }
    }
    out
}

pub fn str_field<'a>(payload: &'a Payload, key: &str) -> &'a str {
    payload.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

/// Points of one document, ordered by chunk index.
pub fn doc_points<'a>(
    points: &'a BTreeMap<PointId, Payload>,
    key: &str,
) -> Vec<(&'a PointId, &'a Payload)> {
    let mut mine: Vec<_> = points
        .iter()
        .filter(|(_, p)| str_field(p, "doc_key") == key)
        .collect();
    mine.sort_by_key(|(_, p)| p.get("chunk_index").and_then(|v| v.as_u64()));
    mine
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// A PostgreSQL database for shared ledgers (`scripts/test` points it at the machine's
/// PostgreSQL); each test takes a schema of its own in it.
pub const LEDGER_URL_ENV: &str = "FRESHET_TEST_LEDGER_URL";

/// Whether the shared-ledger tests can run: a ledger database and the pgvector server
/// (workers need a store they share). Otherwise prints why the test is skipped, and fails
/// under `FRESHET_REQUIRE_PGVECTOR=1` (set by `scripts/test`).
pub fn shared_ledger(test: &str) -> bool {
    if std::env::var(LEDGER_URL_ENV).is_ok() && std::env::var(PGVECTOR_URL_ENV).is_ok() {
        return true;
    }
    if std::env::var("FRESHET_REQUIRE_PGVECTOR").is_ok_and(|v| v == "1") {
        panic!("{test}: {LEDGER_URL_ENV} and {PGVECTOR_URL_ENV} must be set (run scripts/test)");
    }
    eprintln!("SKIPPED {test}: {LEDGER_URL_ENV} (a PostgreSQL database for the shared ledger) and {PGVECTOR_URL_ENV} are needed; scripts/test sets both");
    false
}

/// `[ledger]` settings for a fresh shared ledger (a new schema).
pub fn shared_ledger_config(takeover_s: u64) -> freshet::config::LedgerConfig {
    freshet::config::LedgerConfig {
        url_env: Some(LEDGER_URL_ENV.into()),
        schema: unique_name(),
        lease_takeover_s: takeover_s,
    }
}

/// Sends `signal` (e.g. `-TERM`, `-STOP`) to a child. The workspace forbids unsafe code
/// (libc::kill), so the kill command sends it.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a child to exit; kills it and fails the test after `within`.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("freshet did not exit within {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The real `freshet` binary run in `cwd`, with no config or data directory from the
/// environment.
pub fn freshet_cli(cwd: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(cwd)
        .args(args)
        .env_remove("FRESHET_CONFIG")
        .env_remove("FRESHET_DATA_DIR")
        .output()
        .expect("run freshet")
}

/// A command's stdout as JSON (the panic shows stdout and stderr when it is not).
pub fn stdout_json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not JSON ({err}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A hook that fires once, at the first time `step` is reached.
pub fn crash_at(step: CommitStep) -> SyncOptions {
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    SyncOptions {
        fault: Some(FaultHook(std::sync::Arc::new(move |at| {
            at == step && !fired.swap(true, std::sync::atomic::Ordering::SeqCst)
        }))),
        ..SyncOptions::default()
    }
}
