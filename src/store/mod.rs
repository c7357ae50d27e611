//! Vectors + payloads, behind two small traits: a [`VectorStore`] is one collection, and a
//! [`Catalog`] is where collections live and which one applications query. One file per
//! kind: the embedded engine ([`edge`]), a Qdrant server ([`qdrant`]), PostgreSQL with
//! pgvector ([`pgvector`]); [`connect`] is the only place that looks at the kind.
//!
//! Invariants: when `upsert` or `delete` returns `Ok`, the change is applied and durable
//! (the pipeline commits the ledger only after that); the name applications query moves
//! atomically; no kind writes to or drops a collection that freshet did not create.

mod edge;
mod pgvector;
mod qdrant;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{Config, StoreConfig};

pub use edge::{EdgeCatalog, EdgeStore, OptimizeStep, OPTIMIZE_AFTER_UNINDEXED};
pub use pgvector::{PgvectorCatalog, PgvectorStore, UpsertMethod};
pub use qdrant::{QdrantCatalog, QdrantStore};

pub use crate::sparse::SparseVector;

pub type PointId = Uuid;
pub type Payload = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: PointId,
    pub vector: Vec<f32>,
    /// The chunk's BM25 term weights, for collections that keep them
    /// ([`SparseKind::Bm25`]); `None` elsewhere.
    pub sparse: Option<SparseVector>,
    pub payload: Payload,
}

/// The names of the two vectors of a collection with a keyword side (a collection
/// without one keeps its single unnamed dense vector, as before hybrid retrieval).
pub const DENSE_VECTOR: &str = "dense";
pub const SPARSE_VECTOR: &str = "bm25";

/// How a collection keeps the keyword side of hybrid retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparseKind {
    /// freshet sends each chunk's BM25 term weights (fastembed's `Qdrant/bm25`) as a
    /// sparse vector; the engine keeps document frequencies (the IDF modifier).
    Bm25,
    /// The database indexes the chunk text itself (PostgreSQL full-text search).
    FullText,
}

impl SparseKind {
    /// The suffix that keeps such a collection apart from a dense-only one.
    fn suffix(self) -> &'static str {
        match self {
            SparseKind::Bm25 => "bm25",
            SparseKind::FullText => "fts",
        }
    }
}

/// Which ranking a query uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Nearest dense vectors (cosine).
    Dense,
    /// Keyword ranking only: BM25, or full-text rank in PostgreSQL.
    Sparse,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl QueryMode {
    pub const ALL: [QueryMode; 3] = [QueryMode::Dense, QueryMode::Sparse, QueryMode::Hybrid];

    pub fn name(self) -> &'static str {
        match self {
            QueryMode::Dense => "dense",
            QueryMode::Sparse => "sparse",
            QueryMode::Hybrid => "hybrid",
        }
    }

    pub fn uses_dense(self) -> bool {
        self != QueryMode::Sparse
    }

    pub fn uses_keywords(self) -> bool {
        self != QueryMode::Dense
    }
}

impl std::fmt::Display for QueryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QueryMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueryMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown query mode `{s}`: use dense, sparse or hybrid"))
    }
}

/// One search, ready for a store: every representation its mode needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub mode: QueryMode,
    /// The query's dense vector (empty for a sparse-only query).
    pub dense: Vec<f32>,
    /// The query's BM25 terms (stores that keep [`SparseKind::Bm25`]).
    pub sparse: Option<SparseVector>,
    /// The query text (stores that rank text themselves, [`SparseKind::FullText`]).
    pub text: String,
    /// Results wanted.
    pub k: usize,
    /// Candidates each side brings to a hybrid fusion (at least `k`).
    pub candidates: usize,
    /// Reciprocal rank fusion's constant.
    pub rrf_k: usize,
    pub filter: Option<Filter>,
}

impl Query {
    /// A dense nearest-neighbour query (the engine-level call tools and tests use).
    pub fn dense(vector: &[f32], k: usize, filter: Option<Filter>) -> Self {
        Query {
            mode: QueryMode::Dense,
            dense: vector.to_vec(),
            sparse: None,
            text: String::new(),
            k,
            candidates: k,
            rrf_k: 2,
            filter,
        }
    }

    /// How many candidates each side of a fusion brings.
    pub fn prefetch_limit(&self) -> usize {
        self.candidates.max(self.k)
    }
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Hit {
    pub id: PointId,
    pub score: f32,
    pub payload: Payload,
}

/// A point read back from the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredPoint {
    pub id: PointId,
    pub payload: Payload,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Keyword conditions on payload fields, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The field equals this value.
    Equals(String, String),
    /// The field equals one of these values.
    AnyOf(String, Vec<String>),
}

impl Filter {
    pub fn field(mut self, key: &str, value: &str) -> Self {
        self.conditions
            .push(Condition::Equals(key.to_string(), value.to_string()));
        self
    }

    pub fn any_of(mut self, key: &str, values: Vec<String>) -> Self {
        self.conditions
            .push(Condition::AnyOf(key.to_string(), values));
        self
    }
}

/// Payload fields the store indexes for filtering (chunk reuse looks points up by
/// `chunk_hash`; queries and verification filter by source and document).
pub const INDEXED_FIELDS: [&str; 3] = ["chunk_hash", "source_id", "doc_key"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("vector store {target}: {reason}")]
    Open { target: String, reason: String },
    #[error("cannot reach the vector store at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// A failure that may pass (a connection lost, a timeout, a server overloaded).
    #[error("vector store operation failed: {0}")]
    Operation(String),
    /// The store refused the request; repeating it cannot help.
    #[error("the vector store refused the request: {0}")]
    Rejected(String),
    #[error("{collection} holds {existing} but the model makes {wanted}; a different model needs its own collection (freshet makes one per model when it creates them)")]
    Mismatch {
        collection: String,
        existing: String,
        wanted: String,
    },
    #[error("{name} exists but freshet did not create it; freshet never writes to or drops it: choose another name in [store]")]
    NotOurs { name: String },
}

impl crate::retry::Transient for StoreError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Operation(_) | StoreError::Unreachable { .. }
        )
    }
}

impl StoreError {
    /// Refuses points a collection of `dim`-dimensional vectors must not take: another
    /// dimension, or NaN or infinite values (which no distance can rank).
    pub fn check_points(collection: &str, dim: usize, points: &[Point]) -> Result<(), Self> {
        for point in points {
            Self::check_dimension(collection, dim, point.vector.len())?;
            if point.vector.iter().any(|x| !x.is_finite()) {
                return Err(StoreError::Rejected(format!(
                    "point {} has NaN or infinite values; it was not stored",
                    point.id
                )));
            }
        }
        Ok(())
    }

    /// A keyword or hybrid query on a collection that keeps dense vectors only.
    pub fn no_keyword_side(collection: &str, mode: QueryMode) -> Self {
        StoreError::Rejected(format!(
            "a {mode} query needs keyword (BM25) data, but {collection} keeps dense vectors only: query with --mode dense, or set `[retrieval] sparse = true` and run `freshet sync` to build an index with both"
        ))
    }

    /// Refuses vectors of another dimension than the collection's.
    pub fn check_dimension(collection: &str, existing: usize, wanted: usize) -> Result<(), Self> {
        if existing == wanted {
            Ok(())
        } else {
            Err(Self::dimension(collection, existing, wanted))
        }
    }

    /// The usual mismatch: cosine vectors of another dimension.
    pub fn dimension(collection: &str, existing: usize, wanted: usize) -> Self {
        StoreError::Mismatch {
            collection: collection.to_string(),
            existing: format!("{existing}-dimensional cosine vectors"),
            wanted: format!("{wanted}-dimensional cosine vectors"),
        }
    }
}

/// Which collection holds which model's vectors: what the published name (index.json, a
/// Qdrant alias, a PostgreSQL view) points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexInfo {
    /// The physical collection (directory, Qdrant collection, table).
    pub collection: String,
    pub model_id: String,
    pub dim: usize,
    /// The keyword side it keeps, if any (absent in indexes built before hybrid
    /// retrieval, which hold dense vectors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseKind>,
}

/// Where collections live: one per model, behind the one name applications query.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Where the store is, for messages and `status` (never a secret).
    fn location(&self) -> String;
    /// The name applications query (an alias, a view, or the embedded index).
    fn published_name(&self) -> String;
    /// Whether a collection admits one process at a time (the embedded engine): readers
    /// then wait for a writer, and nobody else may open it while a sync runs.
    fn single_process(&self) -> bool {
        false
    }
    /// How this kind keeps the keyword side of hybrid retrieval.
    fn sparse_kind(&self) -> SparseKind;
    /// The physical collection for a model's vectors (and keyword side, if any).
    fn collection_name(&self, model_id: &str, dim: usize, sparse: Option<SparseKind>) -> String;
    /// What the published name points at, if anything was published yet.
    async fn published(&self) -> Result<Option<IndexInfo>, StoreError>;
    /// Opens `info`'s collection for writing, creating it (with payload indexes) when it
    /// is missing; refuses a collection freshet did not create or whose vectors differ.
    async fn open(&self, info: &IndexInfo) -> Result<Arc<dyn VectorStore>, StoreError>;
    /// Opens `info`'s collection for reading; `None` when it does not exist.
    async fn open_existing(
        &self,
        info: &IndexInfo,
    ) -> Result<Option<Arc<dyn VectorStore>>, StoreError>;
    /// Points the published name at `info`'s collection in one atomic step, then drops
    /// the other collections freshet made for that name.
    async fn publish(&self, info: &IndexInfo) -> Result<(), StoreError>;
}

/// The catalog the config names. Connects (and fails with the host named, never a
/// secret, when the store cannot be reached).
pub async fn connect(config: &Config) -> Result<Arc<dyn Catalog>, StoreError> {
    Ok(match &config.store {
        StoreConfig::Embedded => Arc::new(EdgeCatalog::new(&config.data_dir)),
        StoreConfig::Qdrant(settings) => Arc::new(QdrantCatalog::connect(settings).await?),
        StoreConfig::Pgvector(settings) => Arc::new(PgvectorCatalog::connect(settings).await?),
    })
}

/// One collection per model and dimension, so vectors of different models never mix; a
/// name that is safe as a file name, a Qdrant collection and (lower-cased) SQL.
pub fn model_slug(model_id: &str, dim: usize) -> String {
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

/// [`model_slug`], with the keyword side's suffix when the collection keeps one.
pub fn collection_slug(model_id: &str, dim: usize, sparse: Option<SparseKind>) -> String {
    match sparse {
        Some(kind) => format!("{}-{}", model_slug(model_id, dim), kind.suffix()),
        None => model_slug(model_id, dim),
    }
}

/// Retries a store call on transient errors (a few quick attempts: the pipeline retries
/// writes again on top, with its own patience).
pub(crate) async fn with_retry<T, F, Fut>(
    what: &str,
    attempts: u32,
    call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let backoff = crate::retry::Backoff {
        attempts,
        first_delay: std::time::Duration::from_millis(200),
        max_delay: std::time::Duration::from_secs(5),
    };
    crate::retry::with_backoff(what, backoff, call).await
}

#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Checks that the collection holds `dim`-dimensional cosine vectors.
    async fn ensure_collection(&self, dim: usize) -> Result<(), StoreError>;
    /// Applied and durable on return.
    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError>;
    /// Applied and durable on return; unknown ids are ignored.
    async fn delete(&self, ids: Vec<PointId>) -> Result<(), StoreError>;
    /// The `query.k` best chunks by `query.mode`, best first. A keyword or hybrid query
    /// on a collection without a keyword side is refused.
    async fn search(&self, query: &Query) -> Result<Vec<Hit>, StoreError>;
    async fn count(&self, filter: Option<Filter>) -> Result<usize, StoreError>;
    /// Housekeeping once a sync's writes are done; says what it did, if anything. Never
    /// changes which points exist, and no write may run meanwhile. (The embedded engine
    /// indexes and vacuums here; servers do their own.)
    async fn maintain(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Pages through every point in id order; `None` as the next offset means done.
    async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<Filter>,
        with_vectors: bool,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), StoreError>;
}
