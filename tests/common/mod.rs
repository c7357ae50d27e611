//! Shared helpers for integration tests: a copy of the sample corpus in a temp dir, an
//! index over it with the real model and the real embedded store, and readers for what
//! the store holds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use freshet::config::{Config, FolderConfig, SourceConfig};
use freshet::index::LockMode;
use freshet::pipeline::{RunReport, SyncOptions};
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

/// A temp dir holding `corpus/` (a copy of examples/sample-docs) and `data/`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn with_sample_corpus() -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &repo_root().join("examples/sample-docs"),
            &dir.path().join("corpus"),
        );
        Self { dir }
    }

    pub fn empty() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
        Self { dir }
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
            })],
            ..Config::default()
        }
    }

    /// `template` with this workspace's corpus and data directory.
    pub fn config_for(ws: &Workspace, template: &Config) -> Config {
        let mut config = template.clone();
        config.data_dir = ws.data();
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
