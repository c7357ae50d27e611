//! The embedded vector store: a `qdrant-edge` shard per model on disk under the data
//! directory, and `index.json` naming the one queries use.
//!
//! Invariant: every write is flushed (segments and WAL synced) before it returns, because
//! an edge shard does not replay its WAL on load: an unflushed write would be lost in a
//! crash while the ledger already vouched for it. `index.json` is replaced atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard,
    EdgeSparseVectorParamsBuilder, EdgeVectorParams, FieldCondition, FieldIndexOperations, Fusion,
    JsonPath, Modifier, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId as EdgePointId,
    PointInsertOperations, PointOperations, PointStruct, Prefetch, QueryEnum, QueryRequest,
    ScoringQuery, ScrollRequest, UpdateOperation, Vector as EdgeVector, VectorInternal, Vectors,
    WithPayloadInterface, WithVector,
};

use super::{
    collection_slug, Catalog, Filter, Hit, IndexInfo, Payload, Point, PointId, Query, QueryMode,
    SparseKind, StoreError, StoredPoint, VectorStore, DENSE_VECTOR, INDEXED_FIELDS, SPARSE_VECTOR,
};

mod optimize;

use optimize::OptimizeError;
pub use optimize::OptimizeStep;

const INDEX_FILE: &str = "index.json";
/// Points outside HNSW-indexed segments (searched by brute force) after which a sync
/// ends by optimising the shard ([`EdgeStore::optimize`]), once they are also half as many
/// as the indexed ones and pass the engine's own indexing threshold (10,000 KB of vectors
/// by default: 6,667 vectors of 384 dimensions). Brute force over 20,000 adds a few
/// milliseconds to a query.
pub const OPTIMIZE_AFTER_UNINDEXED: usize = 20_000;
const COLLECTIONS_DIR: &str = "collections";

/// Collections as directories under `data_dir/collections`; `index.json` names the
/// published one.
#[derive(Debug)]
pub struct EdgeCatalog {
    data_dir: PathBuf,
}

impl EdgeCatalog {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn collection_path(&self, collection: &str) -> PathBuf {
        self.data_dir.join(COLLECTIONS_DIR).join(collection)
    }

    /// What `index.json` names, if anything was published yet.
    pub fn read_published(&self) -> Result<Option<IndexInfo>, StoreError> {
        let path = self.data_dir.join(INDEX_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| StoreError::Open {
                    target: path.display().to_string(),
                    reason: format!("damaged: {err}"),
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(StoreError::Open {
                target: path.display().to_string(),
                reason: err.to_string(),
            }),
        }
    }
}

#[async_trait]
impl Catalog for EdgeCatalog {
    fn location(&self) -> String {
        self.data_dir.join(COLLECTIONS_DIR).display().to_string()
    }

    fn published_name(&self) -> String {
        self.data_dir.join(INDEX_FILE).display().to_string()
    }

    fn single_process(&self) -> bool {
        true
    }

    fn sparse_kind(&self) -> SparseKind {
        SparseKind::Bm25
    }

    fn collection_name(&self, model_id: &str, dim: usize, sparse: Option<SparseKind>) -> String {
        collection_slug(model_id, dim, sparse)
    }

    async fn published(&self) -> Result<Option<IndexInfo>, StoreError> {
        self.read_published()
    }

    async fn open(&self, info: &IndexInfo) -> Result<Arc<dyn VectorStore>, StoreError> {
        Ok(Arc::new(
            EdgeStore::open(
                &self.collection_path(&info.collection),
                info.dim,
                info.sparse == Some(SparseKind::Bm25),
            )
            .await?,
        ))
    }

    async fn open_existing(
        &self,
        info: &IndexInfo,
    ) -> Result<Option<Arc<dyn VectorStore>>, StoreError> {
        Ok(
            EdgeStore::open_existing(&self.collection_path(&info.collection))
                .await?
                .map(|s| Arc::new(s) as Arc<dyn VectorStore>),
        )
    }

    async fn publish(&self, info: &IndexInfo) -> Result<(), StoreError> {
        let path = self.data_dir.join(INDEX_FILE);
        let tmp = self.data_dir.join(format!("{INDEX_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(info).expect("IndexInfo serializes");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|err| StoreError::Open {
                target: path.display().to_string(),
                reason: format!("cannot write: {err}"),
            })?;
        let dir = self.data_dir.join(COLLECTIONS_DIR);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // An optimisation of this collection may be running (watch mode publishes
            // from one unit while another optimises): what it leaves is `recover`'s.
            if name != info.collection && !optimize::is_beside(&name, &info.collection) {
                tracing::info!(collection = %entry.path().display(), "dropping the collection of a previous model");
                if let Err(err) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(collection = %entry.path().display(), error = %err, "could not drop an old collection");
                }
            }
        }
        Ok(())
    }
}

pub struct EdgeStore {
    path: PathBuf,
    /// Replaced whole when an optimised copy takes the shard's place; empty when an
    /// optimisation could not put a shard back (see [`optimize::Slot`]).
    shard: Arc<optimize::Slot>,
    /// Writes hold it shared; an optimisation holds it alone, from its copy to its
    /// switch, so that no write lands on a shard about to be replaced (watch mode writes
    /// from several units at once).
    writes: Arc<tokio::sync::RwLock<()>>,
    dim: Option<usize>,
    /// The engine indexes a segment once its vectors pass this size.
    indexing_threshold_kb: usize,
    /// Points in the shard when an optimisation last found nothing to do: the next is
    /// tried only once the shard grew past it by [`OPTIMIZE_AFTER_UNINDEXED`].
    declined_at: AtomicUsize,
    /// Whether the collection keeps BM25 sparse vectors (then its dense vector is named
    /// [`DENSE_VECTOR`]; without, it is the single unnamed vector of older indexes).
    keywords: bool,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EdgeStore {
    /// Opens the collection at `path`, creating it for `dim`-dimensional cosine vectors if
    /// it does not exist yet (with a BM25 sparse vector beside them when `keywords`).
    pub async fn open(path: &Path, dim: usize, keywords: bool) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let open_path = path.clone();
        let shard = blocking(move || open_shard(&open_path, dim, keywords)).await??;
        let store = Self::new(path, shard);
        if store.keywords != keywords {
            return Err(StoreError::Mismatch {
                collection: store.path.display().to_string(),
                existing: layout(store.keywords),
                wanted: layout(keywords),
            });
        }
        store.ensure_collection(dim).await?;
        Ok(store)
    }

    /// Opens an existing collection for reading; `None` when nothing was indexed yet.
    pub async fn open_existing(path: &Path) -> Result<Option<Self>, StoreError> {
        let path = path.to_path_buf();
        let open_path = path.clone();
        let shard = blocking(move || {
            let failed = |reason: String| StoreError::Open {
                target: open_path.display().to_string(),
                reason,
            };
            // A crash during an optimisation may have left the shard beside its place.
            optimize::recover(&open_path).map_err(|err| failed(err.to_string()))?;
            if !open_path.join("edge_config.json").is_file() {
                return Ok(None);
            }
            EdgeShard::load(&open_path, None)
                .map(Some)
                .map_err(|err| failed(err.to_string()))
        })
        .await??;
        Ok(shard.map(|shard| Self::new(path, shard)))
    }

    fn new(path: PathBuf, shard: EdgeShard) -> Self {
        let keywords = shard.config().sparse_vectors.contains_key(SPARSE_VECTOR);
        let dense_name = if keywords { DENSE_VECTOR } else { "" };
        let dim = shard.config().vectors.get(dense_name).map(|v| v.size);
        let indexing_threshold_kb = shard.config().optimizers.get_indexing_threshold_kb();
        Self {
            path,
            shard: Arc::new(tokio::sync::RwLock::new(Some(Arc::new(shard)))),
            writes: Arc::new(tokio::sync::RwLock::new(())),
            keywords,
            dim,
            indexing_threshold_kb,
            declined_at: AtomicUsize::new(0),
        }
    }

    /// The shard in use; waits (without holding a thread) while an optimised copy takes
    /// its place.
    async fn shard(&self) -> Result<Arc<EdgeShard>, StoreError> {
        self.shard.read().await.clone().ok_or_else(|| {
            StoreError::Operation(format!(
                "{}: an optimisation could not finish and left the shard moved; restart freshet (opening the store settles it)",
                self.path.display()
            ))
        })
    }

    /// The dense vector's name in this collection.
    fn dense_name(&self) -> &'static str {
        if self.keywords {
            DENSE_VECTOR
        } else {
            ""
        }
    }

    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    /// Points, and points outside HNSW-indexed segments (searched by brute force).
    pub async fn unindexed(&self) -> Result<(usize, usize), StoreError> {
        let info = self.shard().await?.info();
        // The engine counts every BM25 vector as indexed (a sparse index is always one);
        // a dense vector only in an HNSW-indexed segment.
        let sparse = if self.keywords { info.points_count } else { 0 };
        let dense_indexed = info.indexed_vectors_count.saturating_sub(sparse);
        Ok((
            info.points_count,
            info.points_count.saturating_sub(dense_indexed),
        ))
    }

    /// Runs the engine's optimisers (HNSW indexing of large segments, vacuum of deleted
    /// points, merging) on a copy of the shard, which then takes the shard's place; see
    /// [`optimize`] for why never in place. Returns whether the engine changed anything.
    /// Writes wait meanwhile; reads go on, on the shard before, and wait only during the
    /// switch.
    pub async fn optimize(&self) -> Result<bool, StoreError> {
        self.optimize_stopping(|_| false).await
    }

    /// [`EdgeStore::optimize`], stopped after the step where `stop` says so, as a crash
    /// would stop it (tests): the store then refuses everything, as a dead process would.
    pub async fn optimize_stopping(
        &self,
        stop: impl Fn(OptimizeStep) -> bool + Send + 'static,
    ) -> Result<bool, StoreError> {
        let alone = self.writes.clone().write_owned().await;
        self.optimize_alone(alone, stop).await
    }

    /// Optimises while `alone` keeps writes out (moved into the blocking task, so that
    /// dropping this future cannot let a write in before the task ends).
    async fn optimize_alone(
        &self,
        alone: tokio::sync::OwnedRwLockWriteGuard<()>,
        stop: impl Fn(OptimizeStep) -> bool + Send + 'static,
    ) -> Result<bool, StoreError> {
        let slot = self.shard.clone();
        let path = self.path.clone();
        let outcome = blocking(move || {
            let _alone = alone;
            optimize::optimize_beside(&path, &slot, &stop)
        })
        .await?;
        match outcome {
            Ok(changed) => Ok(changed),
            Err(OptimizeError::Failed(err) | OptimizeError::Stranded(err)) => Err(err),
            Err(OptimizeError::Stopped(step)) => Err(StoreError::Operation(format!(
                "optimisation stopped after {step:?}"
            ))),
        }
    }

    async fn write(&self, operation: UpdateOperation) -> Result<(), StoreError> {
        // Owned and moved into the task: a dropped future cannot let an optimisation copy
        // the shard while this write still lands.
        let shared = self.writes.clone().read_owned().await;
        let shard = self.shard().await?;
        blocking(move || {
            let _shared = shared;
            shard
                .update(operation)
                .map_err(|err| StoreError::Operation(err.to_string()))?;
            shard.flush();
            Ok(())
        })
        .await?
    }
}

/// How a collection's vectors are described in a mismatch.
fn layout(keywords: bool) -> String {
    if keywords {
        "dense and BM25 vectors".into()
    } else {
        "dense vectors only".into()
    }
}

fn open_shard(path: &Path, dim: usize, keywords: bool) -> Result<EdgeShard, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        target: path.display().to_string(),
        reason,
    };
    // A crash during an optimisation may have left the shard beside its place.
    optimize::recover(path).map_err(|err| open_err(err.to_string()))?;
    std::fs::create_dir_all(path).map_err(|err| open_err(err.to_string()))?;
    truncate_wal(path);
    if path.join("edge_config.json").is_file() {
        EdgeShard::load(path, None).map_err(|err| open_err(err.to_string()))
    } else {
        let dense = EdgeVectorParams::builder(dim, Distance::Cosine).build();
        let config = if keywords {
            EdgeConfig::builder()
                .vector(DENSE_VECTOR, dense)
                .sparse_vector(
                    SPARSE_VECTOR,
                    EdgeSparseVectorParamsBuilder::new()
                        .modifier(Modifier::Idf)
                        .build(),
                )
        } else {
            EdgeConfig::builder().vector("", dense)
        }
        .on_disk_payload(true)
        .build();
        let shard = EdgeShard::new(path, config).map_err(|err| open_err(err.to_string()))?;
        for field in INDEXED_FIELDS {
            let field_name = JsonPath::try_from(field).expect("a plain field name is a path");
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name,
                        field_schema: Some(PayloadFieldSchema::FieldType(
                            PayloadSchemaType::Keyword,
                        )),
                    }),
                ))
                .map_err(|err| open_err(format!("cannot index payload field {field}: {err}")))?;
        }
        shard.flush();
        Ok(shard)
    }
}

/// An edge shard appends every write to its WAL but never truncates it (it does not replay
/// it either: freshet flushes segments after every write). Left alone the WAL grows by the
/// size of everything ever written. Before opening, this does what Qdrant's own
/// `prefix_truncate` does with its default retention: delete every closed WAL segment but
/// the newest. The newest one keeps the operation numbering continuous, which matters:
/// segments ignore operations numbered below a point's version.
fn truncate_wal(path: &Path) {
    let wal = path.join("wal");
    let Ok(entries) = std::fs::read_dir(&wal) else {
        return;
    };
    let mut closed: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let start = name.strip_prefix("closed-")?.parse().ok()?;
            Some((start, e.path()))
        })
        .collect();
    closed.sort();
    closed.pop();
    for (_, old) in closed {
        if let Err(err) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %err, "could not remove an old WAL segment");
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| StoreError::Operation(format!("store task failed: {err}")))
}

fn to_edge_filter(filter: Option<Filter>) -> Option<qdrant_edge::Filter> {
    let conditions: Vec<Condition> = filter?
        .conditions
        .into_iter()
        .filter_map(|condition| {
            let (key, matcher): (String, qdrant_edge::Match) = match condition {
                super::Condition::Equals(key, value) => (key, value.into()),
                super::Condition::AnyOf(key, values) => (key, values.into()),
            };
            let path = JsonPath::try_from(key.as_str()).ok()?;
            Some(Condition::Field(FieldCondition::new_match(path, matcher)))
        })
        .collect();
    let first = conditions.first()?.clone();
    let mut edge = qdrant_edge::Filter::new_must(first);
    edge.must = Some(conditions);
    Some(edge)
}

fn uuid_of(id: EdgePointId) -> Result<PointId, StoreError> {
    match id {
        EdgePointId::Uuid(uuid) => Ok(uuid),
        EdgePointId::NumId(n) => Err(StoreError::Operation(format!(
            "point {n} has a numeric id; this collection was not written by freshet"
        ))),
    }
}

fn payload_of(payload: Option<qdrant_edge::Payload>) -> Payload {
    payload
        .map(|p| p.0.into_iter().collect())
        .unwrap_or_default()
}

fn dense_of(vector: Option<qdrant_edge::VectorStructInternal>, name: &str) -> Option<Vec<f32>> {
    match vector? {
        qdrant_edge::VectorStructInternal::Single(v) => Some(v),
        qdrant_edge::VectorStructInternal::Named(mut named) => match named.remove(name)? {
            qdrant_edge::VectorInternal::Dense(v) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    async fn ensure_collection(&self, dim: usize) -> Result<(), StoreError> {
        match self.dim() {
            Some(existing) if existing != dim => Err(StoreError::dimension(
                &self.path.display().to_string(),
                existing,
                dim,
            )),
            _ => Ok(()),
        }
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let keywords = self.keywords;
        let points = points
            .into_iter()
            .map(|p| {
                let vectors: Vectors = if keywords {
                    let sparse = p.sparse.unwrap_or_default();
                    let sparse =
                        EdgeVector::new_sparse(sparse.indices, sparse.values).map_err(|err| {
                            StoreError::Rejected(format!(
                                "point {} has an invalid BM25 vector: {err}",
                                p.id
                            ))
                        })?;
                    Vectors::new_named([
                        (DENSE_VECTOR, EdgeVector::new_dense(p.vector)),
                        (SPARSE_VECTOR, sparse),
                    ])
                } else {
                    p.vector.into()
                };
                Ok(PointStruct::new(
                    EdgePointId::Uuid(p.id),
                    vectors,
                    serde_json::Value::Object(p.payload),
                )
                .into())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .await
    }

    async fn delete(&self, ids: Vec<PointId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.into_iter().map(EdgePointId::Uuid).collect();
        self.write(UpdateOperation::PointOperation(
            PointOperations::DeletePoints { ids },
        ))
        .await
    }

    async fn search(&self, query: &Query) -> Result<Vec<Hit>, StoreError> {
        if query.mode.uses_keywords() && !self.keywords {
            return Err(StoreError::no_keyword_side(
                &self.path.display().to_string(),
                query.mode,
            ));
        }
        let dense = || {
            QueryEnum::Nearest(NamedQuery::new(
                VectorInternal::Dense(query.dense.clone()),
                self.dense_name(),
            ))
        };
        let sparse = || {
            let terms = query.sparse.clone().unwrap_or_default();
            QueryEnum::Nearest(NamedQuery::new(
                VectorInternal::Sparse(qdrant_edge::SparseVector {
                    indices: terms.indices,
                    values: terms.values,
                }),
                SPARSE_VECTOR,
            ))
        };
        let filter = to_edge_filter(query.filter.clone());
        let prefetch = |scoring: QueryEnum| Prefetch {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(scoring)),
            limit: query.prefetch_limit(),
            params: None,
            filter: filter.clone(),
            score_threshold: None,
        };
        let (prefetches, scoring) = match query.mode {
            QueryMode::Dense => (Vec::new(), ScoringQuery::Vector(dense())),
            QueryMode::Sparse => (Vec::new(), ScoringQuery::Vector(sparse())),
            QueryMode::Hybrid => (
                vec![prefetch(dense()), prefetch(sparse())],
                ScoringQuery::Fusion(Fusion::Rrf {
                    k: query.rrf_k,
                    weights: None,
                }),
            ),
        };
        let request = QueryRequest {
            prefetches,
            query: Some(scoring),
            filter,
            score_threshold: None,
            limit: query.k,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let shard = self.shard().await?;
        let points = blocking(move || shard.query(request))
            .await?
            .map_err(|err| StoreError::Operation(err.to_string()))?;
        points
            .into_iter()
            .map(|p| {
                Ok(Hit {
                    id: uuid_of(p.id)?,
                    score: p.score,
                    payload: payload_of(p.payload),
                })
            })
            .collect()
    }

    async fn maintain(&self) -> Result<Option<String>, StoreError> {
        // Decided with writes held out: two watched units finishing rounds together must
        // not both optimise.
        let alone = self.writes.clone().write_owned().await;
        let (points, unindexed) = self.unindexed().await?;
        let indexed = points - unindexed;
        // The engine indexes a segment only past its own size threshold: short of it, an
        // optimisation would copy the shard and change nothing.
        let dense_bytes = unindexed * self.dim.unwrap_or(0) * std::mem::size_of::<f32>();
        // The engine merges down to a few segments and a merge rebuilds the graph of all
        // it merges, so an optimisation costs about as much as the shard is large: waiting
        // until a third of the shard is outside the index keeps the total cost linear.
        let due = unindexed >= OPTIMIZE_AFTER_UNINDEXED
            && unindexed >= indexed / 2
            && dense_bytes >= self.indexing_threshold_kb.saturating_mul(1024)
            && points >= self.declined_at.load(Ordering::SeqCst) + OPTIMIZE_AFTER_UNINDEXED;
        if !due {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let changed = self.optimize_alone(alone, |_| false).await?;
        if !changed {
            self.declined_at.store(points, Ordering::SeqCst);
        }
        let (_, left) = self.unindexed().await?;
        Ok(Some(format!(
            "optimised the embedded shard in {:.1} s: {unindexed} of {points} points were outside the HNSW index, {left} now",
            started.elapsed().as_secs_f64()
        )))
    }

    async fn count(&self, filter: Option<Filter>) -> Result<usize, StoreError> {
        let shard = self.shard().await?;
        let request = CountRequest {
            filter: to_edge_filter(filter),
            exact: true,
        };
        blocking(move || shard.count(request))
            .await?
            .map_err(|err| StoreError::Operation(err.to_string()))
    }

    async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<Filter>,
        with_vectors: bool,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), StoreError> {
        let request = ScrollRequest {
            offset: offset.map(EdgePointId::Uuid),
            limit: Some(limit.max(1)),
            filter: to_edge_filter(filter),
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: WithVector::Bool(with_vectors),
            order_by: None,
        };
        let shard = self.shard().await?;
        let dense_name = self.dense_name();
        let (records, next) = blocking(move || shard.scroll(request))
            .await?
            .map_err(|err| StoreError::Operation(err.to_string()))?;
        let points = records
            .into_iter()
            .map(|r| {
                Ok(StoredPoint {
                    id: uuid_of(r.id)?,
                    payload: payload_of(r.payload),
                    vector: dense_of(r.vector, dense_name),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((points, next.map(uuid_of).transpose()?))
    }
}
