//! An open index: the data directory's lock, the ledger, the embedder, the chunker and the
//! vector store, loaded once and shared by sync and query.
//!
//! Invariant: at most one process uses a data directory's store at a time (an embedded
//! Qdrant shard admits one opener): an OS advisory lock guards it, and it dies with its
//! holder, so a killed process never blocks the next run.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::Chunker;
use crate::config::Config;
use crate::embed::{Embedder, FastEmbedder};
use crate::extract::EXTRACTOR_VERSION;
use crate::ledger::Ledger;
use crate::store::{EdgeStore, Filter, Hit, VectorStore};
use crate::{Error, Result};

const LOCK_FILE: &str = "freshet.lock";
const LEDGER_FILE: &str = "ledger.sqlite";
const INDEX_FILE: &str = "index.json";
const COLLECTIONS_DIR: &str = "collections";

/// What `index.json` records about the collection queries should use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexInfo {
    pub collection: String,
    pub model_id: String,
    pub dim: usize,
}

/// What to do when another process holds the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Fail at once.
    FailIfBusy,
    /// Wait for the holder to finish.
    WaitIfBusy,
}

#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path, mode: LockMode) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            context: format!("cannot create data directory {}", data_dir.display()),
            source,
        })?;
        let path = data_dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                context: format!("cannot open lock file {}", path.display()),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => match mode {
                LockMode::FailIfBusy => {
                    return Err(Error::Locked {
                        data_dir: data_dir.display().to_string(),
                    })
                }
                LockMode::WaitIfBusy => {
                    tracing::warn!(data_dir = %data_dir.display(), "another freshet process holds the data directory; waiting for it");
                    file.lock().map_err(|source| Error::Io {
                        context: format!("cannot lock {}", path.display()),
                        source,
                    })?;
                }
            },
            Err(TryLockError::Error(source)) => {
                return Err(Error::Io {
                    context: format!("cannot lock {}", path.display()),
                    source,
                })
            }
        }
        Ok(Self { _file: file })
    }

    /// The lock, if no other process holds the directory right now.
    pub fn try_exclusive(data_dir: &Path) -> Option<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join(LOCK_FILE))
            .ok()?;
        file.try_lock().ok()?;
        Some(Self { _file: file })
    }
}

/// Everything a sync or a query works with.
pub struct Index {
    pub config: Config,
    pub ledger: Ledger,
    pub embedder: Arc<dyn Embedder>,
    pub chunker: Arc<Chunker>,
    pub store: Arc<dyn VectorStore>,
    pub info: IndexInfo,
    /// Whether `index.json` names this index's collection (known after the first
    /// publish, so queries and rounds need not read the file again).
    published: AtomicBool,
    _lock: DataDirLock,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("data_dir", &self.config.data_dir)
            .field("info", &self.info)
            .finish()
    }
}

impl Index {
    /// Opens for writing: takes the exclusive lock, loads the model, opens (or creates) the
    /// ledger and the model's collection, and records it as the one queries use.
    pub async fn open_for_sync(config: Config, lock: LockMode) -> Result<Self> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let lock = DataDirLock::acquire(&data_dir, lock)?;
        let embedder = load_embedder(&config).await?;
        let ledger = Ledger::open_sqlite(&data_dir.join(LEDGER_FILE)).await?;
        let info = IndexInfo {
            collection: collection_name(embedder.model_id(), embedder.dim()),
            model_id: embedder.model_id().to_string(),
            dim: embedder.dim(),
        };
        let store =
            EdgeStore::open(&collection_path(&data_dir, &info.collection), info.dim).await?;
        Ok(Self {
            ledger,
            chunker: Arc::new(Chunker::new(
                Arc::new(embedder.tokenizer().clone()),
                config.chunking.clone(),
            )),
            embedder: Arc::new(embedder),
            store: Arc::new(store),
            info,
            published: AtomicBool::new(false),
            config,
            _lock: lock,
        })
    }

    /// Opens for queries: waits for any other process using the data directory, then loads
    /// the model and the collection the last sync wrote. (An embedded Qdrant shard admits
    /// one process at a time, readers included; serving queries beside a writer is what
    /// watch mode's query endpoint is for.)
    pub async fn open_for_query(config: Config) -> Result<Self> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let info = read_index_info(&data_dir)?.ok_or_else(|| Error::NoIndex {
            data_dir: data_dir.display().to_string(),
        })?;
        let lock = DataDirLock::acquire(&data_dir, LockMode::WaitIfBusy)?;
        let embedder = load_embedder(&config).await?;
        if embedder.model_id() != info.model_id || embedder.dim() != info.dim {
            return Err(Error::Store(crate::store::StoreError::Open {
                path: data_dir.display().to_string(),
                reason: format!(
                    "the index was built with model `{}` ({} dims) but the configured model is `{}` ({} dims); run `freshet sync` with this model first",
                    info.model_id,
                    info.dim,
                    embedder.model_id(),
                    embedder.dim()
                ),
            }));
        }
        let ledger = Ledger::open_sqlite(&data_dir.join(LEDGER_FILE)).await?;
        let store = EdgeStore::open_existing(&collection_path(&data_dir, &info.collection))
            .await?
            .ok_or_else(|| Error::NoIndex {
                data_dir: data_dir.display().to_string(),
            })?;
        Ok(Self {
            ledger,
            chunker: Arc::new(Chunker::new(
                Arc::new(embedder.tokenizer().clone()),
                config.chunking.clone(),
            )),
            embedder: Arc::new(embedder),
            store: Arc::new(store),
            info,
            // Opened from what index.json names.
            published: AtomicBool::new(true),
            config,
            _lock: lock,
        })
    }

    /// Makes this index's collection the one queries use, when it is not already: at once
    /// when there is none yet, otherwise only after a `complete` sync (so a model change
    /// never sends queries to a half-built collection). Collections of other models are
    /// dropped after the switch.
    pub(crate) fn publish_collection(&self, complete: bool) -> Result<()> {
        if self.is_published() {
            return Ok(());
        }
        let data_dir = &self.config.data_dir;
        let published = read_index_info(data_dir)?;
        if published.as_ref() == Some(&self.info) {
            self.published.store(true, Ordering::SeqCst);
            return Ok(());
        }
        if published.is_some() && !complete {
            tracing::warn!(
                building = %self.info.collection,
                "the new collection is not complete yet; queries keep using the previous one"
            );
            return Ok(());
        }
        write_index_info(data_dir, &self.info)?;
        self.published.store(true, Ordering::SeqCst);
        let dir = data_dir.join(COLLECTIONS_DIR);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_name().to_str() != Some(self.info.collection.as_str()) {
                tracing::info!(collection = %entry.path().display(), "dropping the collection of a previous model");
                if let Err(err) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(collection = %entry.path().display(), error = %err, "could not drop an old collection");
                }
            }
        }
        Ok(())
    }

    /// Whether queries go to this index's collection (see [`Self::publish_collection`]).
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::SeqCst)
    }

    /// Everything that decides what a document's points look like.
    pub fn fingerprint(&self) -> String {
        format!(
            "extractor=v{EXTRACTOR_VERSION};{};model={};dim={}",
            self.chunker.fingerprint(),
            self.info.model_id,
            self.info.dim
        )
    }

    /// Writes every point of the current collection as JSON lines (id order): `id`,
    /// `payload` and, with `with_vectors`, `vector`. Returns the number of points.
    pub async fn export(
        &self,
        out: &mut (dyn std::io::Write + Send),
        with_vectors: bool,
    ) -> Result<u64> {
        let mut offset = None;
        let mut count = 0;
        loop {
            let (points, next) = self.store.scroll(offset, 512, None, with_vectors).await?;
            for point in points {
                serde_json::to_writer(&mut *out, &point).map_err(|err| Error::Io {
                    context: "cannot write the export".into(),
                    source: err.into(),
                })?;
                out.write_all(b"\n").map_err(|source| Error::Io {
                    context: "cannot write the export".into(),
                    source,
                })?;
                count += 1;
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        out.flush().map_err(|source| Error::Io {
            context: "cannot write the export".into(),
            source,
        })?;
        Ok(count)
    }

    /// Embeds `text` and returns the `k` nearest chunks.
    pub async fn query(&self, text: &str, k: usize, filter: Option<Filter>) -> Result<Vec<Hit>> {
        let embedder = self.embedder.clone();
        let text = text.to_string();
        let vector = tokio::task::spawn_blocking(move || embedder.embed(&[text.as_str()]))
            .await
            .map_err(|e| Error::Task(e.to_string()))??
            .pop()
            .unwrap_or_default();
        Ok(self.store.search(&vector, k, filter).await?)
    }
}

/// Loads the configured model off the async runtime (it reads and compiles the ONNX file).
async fn load_embedder(config: &Config) -> Result<FastEmbedder> {
    let embedding = config.embedding.clone();
    tokio::task::spawn_blocking(move || FastEmbedder::load(&embedding))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
}

pub fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LEDGER_FILE)
}

pub fn collection_path(data_dir: &Path, collection: &str) -> PathBuf {
    data_dir.join(COLLECTIONS_DIR).join(collection)
}

/// One collection per model and dimension: vectors of different models never mix.
pub fn collection_name(model_id: &str, dim: usize) -> String {
    let slug: String = model_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{slug}-{dim}")
}

pub fn read_index_info(data_dir: &Path) -> Result<Option<IndexInfo>> {
    let path = data_dir.join(INDEX_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| Error::Io {
                context: format!("{} is damaged", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            context: format!("cannot read {}", path.display()),
            source,
        }),
    }
}

fn write_index_info(data_dir: &Path, info: &IndexInfo) -> Result<()> {
    let path = data_dir.join(INDEX_FILE);
    let tmp = data_dir.join(format!("{INDEX_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(info).expect("IndexInfo serializes");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| Error::Io {
            context: format!("cannot write {}", path.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_filesystem_safe_and_model_specific() {
        assert_eq!(
            collection_name("all-MiniLM-L6-v2-int8", 384),
            "all-MiniLM-L6-v2-int8-384"
        );
        assert_eq!(collection_name("org/model:v1", 768), "org_model_v1-768");
        assert_ne!(collection_name("a", 384), collection_name("a", 768));
    }

    #[test]
    fn the_write_lock_is_exclusive_and_dies_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), LockMode::FailIfBusy).unwrap();
        let second = DataDirLock::acquire(dir.path(), LockMode::FailIfBusy);
        assert!(matches!(second, Err(Error::Locked { .. })));
        drop(first);
        DataDirLock::acquire(dir.path(), LockMode::FailIfBusy).unwrap();
    }
}
