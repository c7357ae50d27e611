//! The default embedder: a local ONNX model (all-MiniLM-L6-v2 int8 unless configured) run
//! by fastembed over a dynamically loaded ONNX Runtime.
//!
//! Invariant: inputs are embedded in length-sorted batches (padding is pure waste) and the
//! results are returned in input order.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};

use super::{locate, EmbedError, Embedder};
use crate::config::{EmbeddingConfig, PoolingConfig};

pub struct FastEmbedder {
    model: Mutex<TextEmbedding>,
    model_id: String,
    dim: usize,
    batch_size: usize,
    /// The model's tokenizer without padding or truncation, for sizing chunks and counting
    /// real tokens.
    tokenizer: tokenizers::Tokenizer,
}

impl std::fmt::Debug for FastEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastEmbedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .finish()
    }
}

/// ONNX Runtime can be loaded once per process; later loads reuse the first result.
static RUNTIME: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();

pub fn load_runtime(configured: Option<&Path>) -> Result<(), EmbedError> {
    let path = locate::onnxruntime_library(configured)?;
    let loaded = RUNTIME.get_or_init(|| {
        ort::init_from(&path)
            .map(|_| path.clone())
            .map_err(|err| err.to_string())
    });
    match loaded {
        Ok(_) => Ok(()),
        Err(reason) => Err(EmbedError::Load {
            path: path.display().to_string(),
            reason: reason.clone(),
        }),
    }
}

/// Loads the tokenizer from a model directory with padding and truncation switched off.
pub fn load_plain_tokenizer(model_dir: &Path) -> Result<tokenizers::Tokenizer, EmbedError> {
    let path = model_dir.join("tokenizer.json");
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(&path).map_err(|err| EmbedError::Load {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|err| EmbedError::Load {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
    Ok(tokenizer)
}

impl FastEmbedder {
    pub fn load(config: &EmbeddingConfig) -> Result<Self, EmbedError> {
        load_runtime(config.onnxruntime_library.as_deref())?;
        let dir = locate::model_dir(config.model_dir.as_deref())?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|err| EmbedError::Load {
                path: dir.join(name).display().to_string(),
                reason: err.to_string(),
            })
        };
        let tokenizer_files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let pooling = match config.pooling {
            PoolingConfig::Mean => Pooling::Mean,
            PoolingConfig::Cls => Pooling::Cls,
        };
        // QuantizationMode::None although the default model is int8: fastembed's "dynamic"
        // mode would refuse batching. Activations are quantized per batch, so a text's
        // vector may differ in the last digits with its batch neighbours; retrieval is
        // unaffected and the ledger never compares vectors.
        let model = UserDefinedEmbeddingModel::new(read("model.onnx")?, tokenizer_files)
            .with_pooling(pooling);
        let mut options = InitOptionsUserDefined::new().with_max_length(config.max_length);
        if config.threads > 0 {
            options = options.with_intra_threads(config.threads);
        }
        let mut embedding =
            TextEmbedding::try_new_from_user_defined(model, options).map_err(|err| {
                EmbedError::Load {
                    path: dir.display().to_string(),
                    reason: err.to_string(),
                }
            })?;
        let probe = embedding
            .embed(["dimension probe"], None)
            .map_err(|err| EmbedError::Load {
                path: dir.display().to_string(),
                reason: format!("the model does not produce embeddings: {err}"),
            })?;
        let dim = probe.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(EmbedError::Load {
                path: dir.display().to_string(),
                reason: "the model produced an empty embedding".into(),
            });
        }
        let model_id = config.model_id.clone().unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        Ok(Self {
            model: Mutex::new(embedding),
            model_id,
            dim,
            batch_size: config.batch_size,
            tokenizer: load_plain_tokenizer(&dir)?,
        })
    }

    /// The model's tokenizer without padding or truncation.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

impl Embedder for FastEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Sort by length so each ONNX batch pads to a similar length, then restore order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i]).collect();
        let vectors = self
            .model
            .lock()
            .map_err(|_| EmbedError::Inference("embedder poisoned by an earlier panic".into()))?
            .embed(&sorted, Some(self.batch_size))
            .map_err(|err| EmbedError::Inference(err.to_string()))?;
        if vectors.len() != texts.len() {
            return Err(EmbedError::Inference(format!(
                "model returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        let mut out = vec![Vec::new(); texts.len()];
        for (vector, &i) in vectors.into_iter().zip(&order) {
            out[i] = vector;
        }
        Ok(out)
    }
}
