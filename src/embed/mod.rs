//! Text -> vectors. The [`Embedder`] trait is what the pipeline sees; [`FastEmbedder`] runs
//! a local ONNX model through fastembed and ONNX Runtime (loaded dynamically).
//!
//! Invariant: `embed` returns exactly one `dim()`-long vector per input, in input order.

mod fastembed;
pub mod locate;

pub use self::fastembed::{length_groups, load_plain_tokenizer, ort_environment, FastEmbedder};

/// Computes embeddings. Blocking and CPU/GPU bound: call it off the async runtime.
pub trait Embedder: Send + Sync + 'static {
    /// Identifies the model; a different id means a different vector space.
    fn model_id(&self) -> &str;
    fn dim(&self) -> usize;
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    NotProvisioned(String),
    #[error("cannot load the embedding model from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("embedding failed: {0}")]
    Inference(String),
}

impl EmbedError {
    /// Inference errors (e.g. out of memory on a busy GPU) may pass; setup errors need the
    /// user.
    pub fn is_transient(&self) -> bool {
        matches!(self, EmbedError::Inference(_))
    }
}
