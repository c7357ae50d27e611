//! An open index: the data directory's lock, the ledger, the embedder, the chunker, and
//! the vector store's catalog and current collection, loaded once and shared by sync and
//! query.
//!
//! Invariant: at most one process writes through a data directory at a time (its ledger
//! is there): an OS advisory lock guards it, and it dies with its holder, so a killed
//! process never blocks the next run. Readers take it too only where the store admits one
//! process at a time (the embedded engine). With a shared ledger there is no directory to
//! guard: workers hold work units through the ledger's leases instead.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::chunk::Chunker;
use crate::config::{Config, ConfigError, OcrKind};
use crate::embed::Embedder;
use crate::extract::{ExtractOptions, MediaType, Ocr, EXTRACTOR_VERSION};
use crate::ledger::{Leases, Ledger};
use crate::rerank::Reranker;
use crate::sparse::Bm25Encoder;
use crate::store::{Catalog, EdgeCatalog, Filter, Hit, Query, QueryMode, SparseKind, VectorStore};
use crate::{Error, Result};

pub use crate::store::IndexInfo;

const LOCK_FILE: &str = "freshet.lock";

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
    /// Which work units this process may write.
    pub leases: Arc<dyn Leases>,
    pub embedder: Arc<dyn Embedder>,
    /// Computes BM25 term weights for chunks and queries, where the collection keeps
    /// them ([`SparseKind::Bm25`]).
    pub sparse: Option<Arc<Bm25Encoder>>,
    /// The cross-encoder, loaded at the first query that reranks.
    reranker: tokio::sync::OnceCell<Arc<Reranker>>,
    pub chunker: Arc<Chunker>,
    /// How documents are read beyond their own text (OCR).
    pub extract: ExtractOptions,
    /// Where collections live and which one applications query.
    pub catalog: Arc<dyn Catalog>,
    /// This model's collection.
    pub store: Arc<dyn VectorStore>,
    pub info: IndexInfo,
    /// Whether the published name points at this index's collection (known after the
    /// first publish, so queries and rounds need not ask the store again).
    published: AtomicBool,
    /// Whether a sync of every source completed into this collection (recorded once).
    completed: AtomicBool,
    _lock: Option<DataDirLock>,
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
    /// Opens for writing: takes the exclusive lock, connects to the store, loads the model,
    /// opens (or creates) the ledger and the model's collection.
    pub async fn open_for_sync(config: Config, lock: LockMode) -> Result<Self> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let lock = if config.ledger.url_env.is_none() {
            Some(DataDirLock::acquire(&data_dir, lock)?)
        } else {
            // Workers sharing a ledger keep only local files here (a watcher's query
            // endpoint address).
            std::fs::create_dir_all(&data_dir).map_err(|source| Error::Io {
                context: format!("cannot create data directory {}", data_dir.display()),
                source,
            })?;
            None
        };
        let extract = extract_options(&config)?;
        let catalog = crate::store::connect(&config).await?;
        let embedder = load_embedder(&config).await?;
        let (ledger, leases) = crate::ledger::open(&config).await?;
        let sparse = config.retrieval.sparse.then(|| catalog.sparse_kind());
        let info = IndexInfo {
            collection: catalog.collection_name(embedder.model_id(), embedder.dim(), sparse),
            model_id: embedder.model_id().to_string(),
            dim: embedder.dim(),
            sparse,
        };
        let store = catalog.open(&info).await?;
        ledger
            .note_collection(&info.collection, &info.model_id, info.dim)
            .await?;
        // A collection that holds no point at all while the ledger records points in it
        // was recreated (a new or restored server, a dropped table): those documents are
        // read and indexed again instead of being trusted.
        let (probe, _) = store.scroll(None, 1, None, false).await?;
        if probe.is_empty() {
            let stale = ledger.invalidate_collection(&info.collection).await?;
            if stale > 0 {
                tracing::warn!(collection = %info.collection, documents = stale, "the collection is empty but the ledger recorded points in it; those documents will be indexed again");
            }
        }
        let published = catalog.published().await?;
        if published.as_ref() == Some(&info) {
            // Finishes a switch that stopped before dropping the previous model's
            // collection (publishing what is published changes nothing else).
            catalog.publish(&info).await?;
        }
        let completed = ledger
            .collection_completed_at(&info.collection)
            .await?
            .is_some();
        Ok(Self {
            ledger,
            leases,
            chunker: Arc::new(Chunker::new(embedder.tokens(), config.chunking.clone())),
            extract,
            embedder,
            sparse: bm25_encoder(&info),
            reranker: tokio::sync::OnceCell::new(),
            published: AtomicBool::new(published.as_ref() == Some(&info)),
            completed: AtomicBool::new(completed),
            catalog,
            store,
            info,
            config,
            _lock: lock,
        })
    }

    /// Opens for queries: loads the model and the collection applications query. (An
    /// embedded Qdrant shard admits one process at a time, readers included: there this
    /// waits for any other process, and serving queries beside a writer is what watch
    /// mode's query endpoint is for.)
    pub async fn open_for_query(config: Config) -> Result<Self> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        let catalog = crate::store::connect(&config).await?;
        let no_index = || Error::NoIndex {
            data_dir: catalog.published_name(),
        };
        let info = catalog.published().await?.ok_or_else(no_index)?;
        let lock = if catalog.single_process() {
            Some(DataDirLock::acquire(&data_dir, LockMode::WaitIfBusy)?)
        } else {
            None
        };
        let embedder = load_embedder(&config).await?;
        if embedder.model_id() != info.model_id || embedder.dim() != info.dim {
            return Err(Error::Store(crate::store::StoreError::Open {
                target: catalog.published_name(),
                reason: format!(
                    "the index was built with model `{}` ({} dims) but the configured model is `{}` ({} dims); run `freshet sync` with this model first",
                    info.model_id,
                    info.dim,
                    embedder.model_id(),
                    embedder.dim()
                ),
            }));
        }
        let (ledger, leases) = crate::ledger::open(&config).await?;
        let store = catalog.open_existing(&info).await?.ok_or_else(no_index)?;
        let completed = ledger
            .collection_completed_at(&info.collection)
            .await?
            .is_some();
        Ok(Self {
            ledger,
            leases,
            chunker: Arc::new(Chunker::new(embedder.tokens(), config.chunking.clone())),
            // Queries read no documents.
            extract: ExtractOptions::default(),
            embedder,
            sparse: bm25_encoder(&info),
            reranker: tokio::sync::OnceCell::new(),
            catalog,
            store,
            info,
            // Opened from what the published name points at.
            published: AtomicBool::new(true),
            completed: AtomicBool::new(completed),
            config,
            _lock: lock,
        })
    }

    /// Makes this index's collection the one applications query, when it is not already:
    /// only after a `complete` sync (every source's scan finished), so a model change
    /// never sends queries to a half-built collection. The store drops collections of
    /// other models after the switch. A complete sync is also recorded, which ends the
    /// first build's "partial" state.
    pub(crate) async fn publish_collection(&self, complete: bool) -> Result<()> {
        if complete && !self.completed.load(Ordering::SeqCst) {
            self.ledger
                .complete_collection(&self.info.collection)
                .await?;
            self.completed.store(true, Ordering::SeqCst);
        }
        if self.is_published() {
            return Ok(());
        }
        let published = self.catalog.published().await?;
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
        self.catalog.publish(&self.info).await?;
        self.published.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Before a run writes anything: the very first collection of an index is published at
    /// once, so applications can query it while it fills (there is nothing older to
    /// protect; `status` says it is partial until a sync of every source completed).
    pub(crate) async fn publish_first_build(&self) -> Result<()> {
        if self.is_published() {
            return Ok(());
        }
        if self.catalog.published().await?.is_none() {
            tracing::info!(collection = %self.info.collection, name = %self.catalog.published_name(), "first build: published at once, queryable as it fills");
            self.catalog.publish(&self.info).await?;
            self.published.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Whether queries go to this index's collection (see [`Self::publish_collection`]).
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::SeqCst)
    }

    /// Everything that decides what a document's points look like, for documents the
    /// extraction options do not apply to (see [`ExtractOptions::apply_to`]).
    pub fn fingerprint(&self) -> String {
        let sparse = match self.info.sparse {
            // The BM25 settings are fastembed's `Qdrant/bm25` defaults (see crate::sparse).
            Some(SparseKind::Bm25) => ";sparse=bm25-en-v1",
            Some(SparseKind::FullText) => ";sparse=fts-english",
            None => "",
        };
        format!(
            "extractor=v{EXTRACTOR_VERSION};{};model={};dim={}{sparse}",
            self.chunker.fingerprint(),
            self.info.model_id,
            self.info.dim,
        )
    }

    /// The fingerprint of documents of one type: the extraction options count only for
    /// the types they apply to (turning OCR on re-reads scans and images, not the whole
    /// corpus), and a format's own reader version only for that format.
    pub fn fingerprint_of(&self, media: MediaType) -> String {
        let mut fingerprint = self.fingerprint();
        if ExtractOptions::apply_to(media) {
            fingerprint.push_str(&self.extract.fingerprint());
        }
        fingerprint + &media.reader_version()
    }

    /// Every fingerprint a row may carry under the current settings: of each type, and
    /// of a row of no known type.
    pub fn current_fingerprints(&self) -> Vec<String> {
        let mut all: Vec<String> = MediaType::ALL
            .iter()
            .map(|m| self.fingerprint_of(*m))
            .collect();
        all.push(self.fingerprint());
        all.sort();
        all.dedup();
        all
    }

    /// The mode a query uses when none is asked for: hybrid where the index keeps a
    /// keyword side, dense otherwise.
    pub fn default_mode(&self) -> QueryMode {
        if self.info.sparse.is_some() {
            QueryMode::Hybrid
        } else {
            QueryMode::Dense
        }
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

    /// The `k` best chunks for `text`: dense, keyword (BM25 / full text) or hybrid (both,
    /// fused by reciprocal rank); `None` takes [`Self::default_mode`].
    pub async fn query(
        &self,
        text: &str,
        k: usize,
        mode: Option<QueryMode>,
        filter: Option<Filter>,
    ) -> Result<Vec<Hit>> {
        self.query_with(
            text,
            k,
            &QueryOptions {
                mode,
                rerank: None,
                filter,
            },
        )
        .await
    }

    /// [`Self::query`] with every option: `rerank: None` reranks when a reranker is
    /// configured. With reranking, the best `rerank_top_n` retrieved chunks are rescored
    /// by the cross-encoder and reordered; when `k` is larger, the retrieval order
    /// continues after them.
    pub async fn query_with(
        &self,
        text: &str,
        k: usize,
        options: &QueryOptions,
    ) -> Result<Vec<Hit>> {
        let retrieval = &self.config.retrieval;
        let rerank = options
            .rerank
            .unwrap_or(retrieval.rerank_model_dir.is_some());
        let reranker = if rerank {
            Some(self.reranker().await?)
        } else {
            None
        };
        let fetch = if rerank {
            k.max(retrieval.rerank_top_n)
        } else {
            k
        };
        let mut hits = self
            .retrieve(text, fetch, options.mode, options.filter.clone())
            .await?;
        let Some(reranker) = reranker else {
            return Ok(hits);
        };
        let rest = hits.split_off(hits.len().min(retrieval.rerank_top_n));
        let text = text.to_string();
        let mut reranked = tokio::task::spawn_blocking(move || {
            let n = hits.len();
            reranker.rerank(&text, hits, n)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        reranked.extend(rest);
        reranked.truncate(k);
        Ok(reranked)
    }

    /// The configured cross-encoder, loaded once.
    async fn reranker(&self) -> Result<Arc<Reranker>> {
        let Some(dir) = self.config.retrieval.rerank_model_dir.clone() else {
            return Err(Error::Store(crate::store::StoreError::Rejected(
                "reranking needs a cross-encoder: set `[retrieval] rerank_model_dir` (scripts/provision --rerank fetches one)".into(),
            )));
        };
        let library = self.config.embedding.onnxruntime_library.clone();
        let threads = self.config.embedding.threads;
        let reranker = self
            .reranker
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    Reranker::load(&dir, library.as_deref(), threads).map(Arc::new)
                })
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(Error::from)
            })
            .await?;
        Ok(reranker.clone())
    }

    async fn retrieve(
        &self,
        text: &str,
        k: usize,
        mode: Option<QueryMode>,
        filter: Option<Filter>,
    ) -> Result<Vec<Hit>> {
        let mode = mode.unwrap_or_else(|| self.default_mode());
        let dense = if mode.uses_dense() {
            let embedder = self.embedder.clone();
            let text = text.to_string();
            tokio::task::spawn_blocking(move || embedder.embed(&[text.as_str()]))
                .await
                .map_err(|e| Error::Task(e.to_string()))??
                .pop()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let retrieval = &self.config.retrieval;
        let query = Query {
            mode,
            dense,
            sparse: self.sparse.as_ref().map(|bm25| bm25.query(text)),
            text: text.to_string(),
            k,
            candidates: retrieval.candidates,
            rrf_k: retrieval.rrf_k,
            filter,
        };
        Ok(self.store.search(&query).await?)
    }
}

/// How a query ranks: see [`Index::query_with`].
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// `None`: hybrid where the index keeps keywords, else dense.
    pub mode: Option<QueryMode>,
    /// `None`: rerank when a reranker is configured.
    pub rerank: Option<bool>,
    pub filter: Option<Filter>,
}

/// The extraction options a sync runs with; asking for OCR without a working tesseract
/// stops here, before anything is read.
fn extract_options(config: &Config) -> Result<ExtractOptions> {
    let extract = &config.extract;
    let ocr = match extract.ocr {
        OcrKind::Off => None,
        OcrKind::Tesseract => Some(
            Ocr::detect(
                &extract.ocr_languages,
                extract.ocr_dpi,
                std::time::Duration::from_secs(extract.ocr_timeout_s),
            )
            .map_err(ConfigError::Invalid)?,
        ),
    };
    Ok(ExtractOptions { ocr })
}

/// The BM25 encoder a collection that keeps BM25 vectors needs.
fn bm25_encoder(info: &IndexInfo) -> Option<Arc<Bm25Encoder>> {
    (info.sparse == Some(SparseKind::Bm25)).then(|| Arc::new(Bm25Encoder::new()))
}

/// Loads the configured model off the async runtime (it reads and compiles the ONNX file).
async fn load_embedder(config: &Config) -> Result<Arc<dyn Embedder>> {
    let embedding = config.embedding.clone();
    tokio::task::spawn_blocking(move || crate::embed::load(&embedding))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::from)
}

pub fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::ledger::SQLITE_FILE)
}

/// What the embedded store's `index.json` names (other kinds: [`Catalog::published`]).
pub fn read_index_info(data_dir: &Path) -> Result<Option<IndexInfo>> {
    Ok(EdgeCatalog::new(data_dir).read_published()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_filesystem_safe_and_model_specific() {
        use crate::store::model_slug;
        assert_eq!(
            model_slug("all-MiniLM-L6-v2-int8", 384),
            "all-MiniLM-L6-v2-int8-384"
        );
        assert_eq!(model_slug("org/model:v1", 768), "org_model_v1-768");
        assert_ne!(model_slug("a", 384), model_slug("a", 768));
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
