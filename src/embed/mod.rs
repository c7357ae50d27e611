//! Text -> vectors. The [`Embedder`] trait is what the pipeline sees: [`FastEmbedder`]
//! runs a local ONNX model through ONNX Runtime (on the CPU or a CUDA device), and
//! [`OpenAiEmbedder`] calls any OpenAI-compatible `/v1/embeddings` service. [`load`]
//! picks one from the configuration; nothing else matches on the kind.
//!
//! Invariant: `embed` returns exactly one `dim()`-long, finite vector per input, in input
//! order, or an error and no vectors at all.

mod fastembed;
pub mod locate;
mod openai;
mod tokens;

use std::sync::Arc;

pub use self::fastembed::{length_groups, load_plain_tokenizer, ort_environment, FastEmbedder};
pub use self::openai::OpenAiEmbedder;
pub use self::tokens::{CountTokens, Tokens};
use crate::config::{EmbeddingConfig, ProviderKind};

/// Computes embeddings. Blocking and CPU/GPU/network bound: call it off the async runtime.
pub trait Embedder: Send + Sync + 'static {
    /// Identifies the model; a different id means a different vector space.
    fn model_id(&self) -> &str;
    fn dim(&self) -> usize;
    /// Counts tokens as the model does: chunks are sized with it.
    fn tokens(&self) -> Tokens;
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Loads the configured embedder. Blocking (it may read and compile a model, or probe a
/// service): call it off the async runtime.
pub fn load(config: &EmbeddingConfig) -> Result<Arc<dyn Embedder>, EmbedError> {
    Ok(match config.provider {
        ProviderKind::Local => Arc::new(FastEmbedder::load(config)?),
        ProviderKind::Openai => Arc::new(OpenAiEmbedder::connect(config)?),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    NotProvisioned(String),
    #[error("cannot load the embedding model from {path}: {reason}")]
    Load { path: String, reason: String },
    /// The local model failed on some input.
    #[error("embedding failed: {0}")]
    Inference(String),
    /// The service would not take this input (it is too long, or the service answered
    /// 400/413/422 for it): the document fails, the run goes on.
    #[error("{0}")]
    Rejected(String),
    /// The service could not be reached or stayed overloaded through every retry.
    #[error("{0}")]
    Unavailable(String),
    /// The service refused the request as a whole (bad key, unknown model), or answered
    /// with something that is not one finite vector of the expected length per input.
    /// Nothing of the batch may be stored; the run fails.
    #[error("{0}")]
    Service(String),
}

impl EmbedError {
    /// Inference errors (e.g. out of memory on a busy GPU) and an unreachable service may
    /// pass; setup errors need the user.
    pub fn is_transient(&self) -> bool {
        matches!(self, EmbedError::Inference(_) | EmbedError::Unavailable(_))
    }

    /// Whether the error belongs to the input (that document fails alone) rather than
    /// to the embedder (the run stops, and nothing of the batch is recorded).
    pub fn blames_input(&self) -> bool {
        matches!(self, EmbedError::Inference(_) | EmbedError::Rejected(_))
    }
}
