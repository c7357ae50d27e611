//! Vectors + payloads, behind the small [`VectorStore`] trait. The embedded default is
//! Qdrant's own engine in-process ([`EdgeStore`]).
//!
//! Invariant: when `upsert` or `delete` returns `Ok`, the change is applied and durable;
//! the pipeline commits the ledger only after that.

mod edge;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

pub use edge::EdgeStore;

pub type PointId = Uuid;
pub type Payload = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: PointId,
    pub vector: Vec<f32>,
    pub payload: Payload,
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
    #[error("vector store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("vector store operation failed: {0}")]
    Operation(String),
    #[error("the index was built with {existing}-dimensional vectors but the model makes {wanted}; a different model needs its own collection")]
    DimensionMismatch { existing: usize, wanted: usize },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Operation(_))
    }
}

#[async_trait]
pub trait VectorStore: Send + Sync {
    async fn ensure_collection(&self, dim: usize) -> Result<(), StoreError>;
    /// Applied and durable on return.
    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError>;
    /// Applied and durable on return; unknown ids are ignored.
    async fn delete(&self, ids: Vec<PointId>) -> Result<(), StoreError>;
    async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<Filter>,
    ) -> Result<Vec<Hit>, StoreError>;
    async fn count(&self, filter: Option<Filter>) -> Result<usize, StoreError>;
    /// Pages through every point in id order; `None` as the next offset means done.
    async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<Filter>,
        with_vectors: bool,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), StoreError>;
}
