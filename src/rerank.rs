//! Reranking: a cross-encoder ONNX model (fastembed's `TextRerank` over ONNX Runtime)
//! scores each (query, chunk) pair and reorders a query's fused results.
//!
//! Invariant: reranking only reorders what retrieval returned (it never adds a chunk), and
//! the score it reports is the cross-encoder's probability that the chunk is relevant
//! (the sigmoid of its logit), so scores compare across queries.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fastembed::{
    RerankInitOptionsUserDefined, TextRerank, TokenizerFiles, UserDefinedRerankingModel,
};

use crate::embed::EmbedError;
use crate::store::Hit;

/// Files a reranker directory must hold (`config.json` is optional: the pad token comes
/// from the tokenizer when it is absent).
pub const RERANK_FILES: [&str; 4] = [
    "model.onnx",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Where `scripts/provision --rerank` puts ms-marco-MiniLM-L-12-v2 (int8).
pub fn default_rerank_dir() -> PathBuf {
    crate::embed::locate::cache_dir()
        .join("models")
        .join("ms-marco-MiniLM-L-12-v2-int8")
}

/// A loaded cross-encoder. One session; queries take turns (a rerank of 50 chunks is
/// one batch).
pub struct Reranker {
    dir: PathBuf,
    model: Mutex<TextRerank>,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker").field("dir", &self.dir).finish()
    }
}

impl Reranker {
    /// Loads the model in `dir` on ONNX Runtime (`onnxruntime_library` as for the
    /// embedder), with `threads` intra-op threads (0: ONNX Runtime's default).
    pub fn load(
        dir: &Path,
        onnxruntime_library: Option<&Path>,
        threads: usize,
    ) -> Result<Self, EmbedError> {
        let missing: Vec<&str> = RERANK_FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            let hint = if dir == default_rerank_dir() {
                "run `scripts/provision --rerank` (fetches the pinned cross-encoder from PyPI)"
                    .to_string()
            } else {
                format!(
                    "point retrieval.rerank_model_dir at a directory holding {}",
                    RERANK_FILES.join(", ")
                )
            };
            return Err(EmbedError::NotProvisioned(format!(
                "reranker not found: {} lacks {}; {hint}",
                dir.display(),
                missing.join(", ")
            )));
        }
        let environment = crate::embed::ort_environment(onnxruntime_library)?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|err| EmbedError::Load {
                path: dir.join(name).display().to_string(),
                reason: err.to_string(),
            })
        };
        let config_file = match std::fs::read(dir.join("config.json")) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => b"{}".to_vec(),
            Err(err) => {
                return Err(EmbedError::Load {
                    path: dir.join("config.json").display().to_string(),
                    reason: err.to_string(),
                })
            }
        };
        let files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let model = UserDefinedRerankingModel::new(dir.join("model.onnx"), files);
        let mut options = RerankInitOptionsUserDefined::new()
            .with_environment(environment)
            .with_max_length(512);
        if threads > 0 {
            options = options.with_intra_threads(threads);
        }
        let model = TextRerank::try_new_from_user_defined(model, options).map_err(|err| {
            EmbedError::Load {
                path: dir.display().to_string(),
                reason: err.to_string(),
            }
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model: Mutex::new(model),
        })
    }

    /// Scores `texts` against `query`: the relevance probability of each, in input order.
    pub fn score(&self, query: &str, texts: &[&str]) -> Result<Vec<f32>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let results = model
            .rerank(query, texts, false, Some(texts.len()))
            .map_err(|err| EmbedError::Inference(err.to_string()))?;
        let mut scores = vec![0.0; texts.len()];
        for result in results {
            scores[result.index] = sigmoid(result.score);
        }
        Ok(scores)
    }

    /// `hits` reordered by the cross-encoder, the best `k` kept, each scored by it.
    pub fn rerank(&self, query: &str, hits: Vec<Hit>, k: usize) -> Result<Vec<Hit>, EmbedError> {
        let texts: Vec<String> = hits.iter().map(rerank_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let scores = self.score(query, &refs)?;
        let mut scored: Vec<(f32, Hit)> = scores.into_iter().zip(hits).collect();
        // Stable: equal scores keep the retrieval order.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .take(k)
            .map(|(score, mut hit)| {
                hit.score = score;
                hit
            })
            .collect())
    }
}

/// What the cross-encoder reads of a chunk: its heading path, then its text.
fn rerank_text(hit: &Hit) -> String {
    let text = hit
        .payload
        .get("text")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let headings: Vec<&str> = hit
        .payload
        .get("heading_path")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
        .unwrap_or_default();
    if headings.is_empty() {
        text.to_string()
    } else {
        format!("{}\n{text}", headings.join(" > "))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
