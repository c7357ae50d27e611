//! The default embedder: a local ONNX model (all-MiniLM-L6-v2 int8 unless configured) run
//! by fastembed over a dynamically loaded ONNX Runtime, on the CPU or a CUDA device.
//!
//! Invariant: inputs are embedded in length-sorted batches (padding is pure waste) and the
//! results are returned in input order; a configured GPU is used or the load fails (the
//! CPU stands in only when `fallback = "cpu"` says so, and that is logged).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};

use ort::environment::Environment;

use super::{locate, EmbedError, Embedder, Tokens};
use crate::config::{Device, DeviceFallback, EmbeddingConfig, PoolingConfig};

pub struct FastEmbedder {
    /// One session per worker: on the CPU, single-threaded sessions working on different
    /// length groups in parallel outran one session using every thread (1.28x measured on
    /// 2 cores, examples/bench.rs): no barrier between threads at every operator.
    models: Vec<Mutex<TextEmbedding>>,
    model_id: String,
    dim: usize,
    batch_size: usize,
    batch_tokens: usize,
    /// The model's tokenizer without padding or truncation, for sizing chunks and counting
    /// real tokens.
    tokenizer: tokenizers::Tokenizer,
    tokens: Tokens,
    device: Device,
}

impl std::fmt::Debug for FastEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastEmbedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .finish()
    }
}

/// ONNX Runtime is loaded, and its one environment built, once per process; later calls
/// reuse the first result.
static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime and returns the process's environment (sessions need one, and
/// ONNX Runtime allows only one per process).
pub fn ort_environment(configured: Option<&Path>) -> Result<Environment, EmbedError> {
    ort_environment_for(configured, false)
}

fn ort_environment_for(configured: Option<&Path>, gpu: bool) -> Result<Environment, EmbedError> {
    let path = locate::onnxruntime_library(configured, gpu)?;
    let loaded = RUNTIME.get_or_init(|| {
        ort::init_from(&path)
            .map_err(|err| err.to_string())?
            .with_name("freshet")
            .build()
            .map_err(|err| err.to_string())
    });
    loaded.clone().map_err(|reason| EmbedError::Load {
        path: path.display().to_string(),
        reason,
    })
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

/// CUDA and cuDNN libraries in the order they depend on each other. Loaded from the
/// provisioned directory before the CUDA provider registers, so the provider finds them by
/// soname without `LD_LIBRARY_PATH`.
const CUDA_LIBRARY_PREFIXES: [&str; 14] = [
    "libcudart.so",
    "libcublasLt.so",
    "libcublas.so",
    "libnvrtc.so",
    "libcurand.so",
    "libcufft.so",
    "libcudnn.so",
    "libcudnn_graph.so",
    "libcudnn_ops.so",
    "libcudnn_heuristic.so",
    "libcudnn_adv.so",
    "libcudnn_cnn.so",
    "libcudnn_engines_precompiled.so",
    "libcudnn_engines_runtime_compiled.so",
];

/// Loads the provisioned CUDA libraries, when `scripts/provision --gpu` put them there;
/// without them the provider searches the system's library path.
fn preload_cuda_libraries() -> Result<(), String> {
    let dir = locate::cuda_libraries_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for prefix in CUDA_LIBRARY_PREFIXES {
        let mut found: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(prefix) && n[prefix.len()..].starts_with('.'))
            .collect();
        found.sort();
        if let Some(name) = found.first() {
            ort::util::preload_dylib(dir.join(name))
                .map_err(|err| format!("cannot load {}: {err}", dir.join(name).display()))?;
        }
    }
    Ok(())
}

/// Registers the CUDA provider on `device`, or says what is missing.
fn cuda_provider(
    device: i32,
    library: Option<&Path>,
) -> Result<(Environment, ort::ep::ExecutionProviderDispatch), EmbedError> {
    use ort::ep::ExecutionProvider;
    let library_path = locate::onnxruntime_library(library, true)?;
    let unusable = |reason: String| EmbedError::Load {
        path: format!("cuda:{device}"),
        reason,
    };
    preload_cuda_libraries().map_err(|reason| {
        unusable(format!(
            "{reason}; re-run `scripts/provision --gpu` (CUDA 12 runtime and cuDNN 9 from PyPI)"
        ))
    })?;
    let environment = ort_environment_for(library, true)?;
    let compiled_in = ort::ep::CUDA::is_available().map_err(|e| unusable(e.to_string()))?;
    if !compiled_in {
        return Err(unusable(format!(
            "the ONNX Runtime loaded in this process ({}) has no CUDA provider; run `scripts/provision --gpu` and leave embedding.onnxruntime_library unset (or point it at a GPU build)",
            library_path.display()
        )));
    }
    let provider = ort::ep::CUDA::default()
        .with_device_id(device)
        .build()
        .error_on_failure();
    Ok((environment, provider))
}

impl FastEmbedder {
    /// Loads the model on the configured device. A GPU that cannot be used fails the load
    /// with the reason, unless `fallback = "cpu"`.
    pub fn load(config: &EmbeddingConfig) -> Result<Self, EmbedError> {
        let device = config.parsed_device().map_err(|reason| EmbedError::Load {
            path: "embedding.device".into(),
            reason,
        })?;
        match Self::load_on(config, device) {
            Err(err) if device != Device::Cpu && config.fallback == Some(DeviceFallback::Cpu) => {
                tracing::warn!(device = %config.device, error = %err, "the GPU cannot be used; embedding on the CPU as `fallback = \"cpu\"` allows");
                Self::load_on(config, Device::Cpu)
            }
            other => other,
        }
    }

    fn load_on(config: &EmbeddingConfig, device: Device) -> Result<Self, EmbedError> {
        let (environment, providers) = match device {
            Device::Cpu => (
                ort_environment(config.onnxruntime_library.as_deref())?,
                Vec::new(),
            ),
            Device::Cuda(id) => {
                let (environment, provider) =
                    cuda_provider(id, config.onnxruntime_library.as_deref())?;
                (environment, vec![provider])
            }
        };
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
        let model_bytes = read("model.onnx")?;
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let sessions = session_count(config.sessions, device, threads, model_bytes.len());
        let model =
            UserDefinedEmbeddingModel::new(model_bytes, tokenizer_files).with_pooling(pooling);
        let mut providers = Some(providers);
        let mut models = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let options = InitOptionsUserDefined::new()
                .with_environment(environment.clone())
                .with_max_length(config.max_length)
                // One session on a device; on the CPU the threads are split among sessions.
                .with_execution_providers(providers.take().unwrap_or_default())
                .with_intra_threads((threads / sessions).max(1));
            let embedding = TextEmbedding::try_new_from_user_defined(model.clone(), options)
                .map_err(|err| EmbedError::Load {
                    path: match device {
                        Device::Cpu => dir.display().to_string(),
                        Device::Cuda(id) => format!("{} on cuda:{id}", dir.display()),
                    },
                    reason: match device {
                        Device::Cpu => err.to_string(),
                        Device::Cuda(_) => format!("{err} (the CUDA provider needs an NVIDIA driver for CUDA 12, libcuda.so.1, and the libraries `scripts/provision --gpu` fetches)"),
                    },
                })?;
            models.push(Mutex::new(embedding));
        }
        let mut embedding = models[0].lock().expect("fresh mutex");
        let probe = embedding
            .embed(["dimension probe"], None)
            .map_err(|err| EmbedError::Load {
                path: dir.display().to_string(),
                reason: format!("the model does not produce embeddings: {err}"),
            })?;
        drop(embedding);
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
        let tokenizer = load_plain_tokenizer(&dir)?;
        if device != Device::Cpu {
            tracing::info!(device = ?device, model = %model_id, "embedding on the GPU");
        }
        tracing::debug!(sessions, threads, "embedding sessions loaded");
        Ok(Self {
            models,
            model_id,
            dim,
            batch_size: config.batch_size,
            batch_tokens: config.batch_tokens,
            tokens: Tokens::new(tokenizer.clone()),
            tokenizer,
            device,
        })
    }

    /// Where the model runs (the CPU when a GPU fell back).
    pub fn device(&self) -> Device {
        self.device
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

    fn tokens(&self) -> Tokens {
        self.tokens.clone()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let groups = length_groups(texts, self.batch_size, self.batch_tokens);
        let workers = self.models.len().min(groups.len());
        let mut out = vec![Vec::new(); texts.len()];
        if workers <= 1 {
            for group in &groups {
                place(&mut out, group, self.embed_group(0, texts, group)?);
            }
            return Ok(out);
        }
        // Each worker owns one session and takes the next group until none is left, so a
        // long group on one session does not hold the others up.
        let next = AtomicUsize::new(0);
        let done: Vec<Result<Vec<EmbeddedGroup>, EmbedError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|worker| {
                    let (next, groups) = (&next, &groups);
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        loop {
                            let g = next.fetch_add(1, Ordering::Relaxed);
                            let Some(group) = groups.get(g) else {
                                return Ok(mine);
                            };
                            mine.push((g, self.embed_group(worker, texts, group)?));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EmbedError::Inference("an embedding thread panicked".into()))
                    })
                })
                .collect()
        });
        for worker in done {
            for (g, vectors) in worker? {
                place(&mut out, &groups[g], vectors);
            }
        }
        Ok(out)
    }
}

impl FastEmbedder {
    /// Embeds one length group on session `worker`; exactly one vector per text.
    fn embed_group(
        &self,
        worker: usize,
        texts: &[&str],
        group: &[usize],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch: Vec<&str> = group.iter().map(|&i| texts[i]).collect();
        // Locked per group, not per call: a query embedding its one text while a watcher
        // indexes waits for one small group, not for the whole batch.
        let vectors = self.models[worker]
            .lock()
            .map_err(|_| EmbedError::Inference("embedder poisoned by an earlier panic".into()))?
            .embed(&batch, Some(batch.len()))
            .map_err(|err| EmbedError::Inference(err.to_string()))?;
        if vectors.len() != batch.len() {
            return Err(EmbedError::Inference(format!(
                "model returned {} vectors for {} texts",
                vectors.len(),
                batch.len()
            )));
        }
        Ok(vectors)
    }
}

/// A length group's index and its vectors.
type EmbeddedGroup = (usize, Vec<Vec<f32>>);

fn place(out: &mut [Vec<f32>], group: &[usize], vectors: Vec<Vec<f32>>) {
    for (vector, &i) in vectors.into_iter().zip(group) {
        out[i] = vector;
    }
}

/// How many sessions to load: `embedding.sessions` when set; one on a GPU; else one
/// single-threaded session per thread while their copies of the weights stay under
/// 1 GiB in all (a large model gets one session using every thread).
fn session_count(configured: usize, device: Device, threads: usize, model_bytes: usize) -> usize {
    const WEIGHTS_BUDGET: usize = 1 << 30;
    match (configured, device) {
        (n, _) if n > 0 => n,
        (_, Device::Cuda(_)) => 1,
        (_, Device::Cpu) => threads.min(WEIGHTS_BUDGET / model_bytes.max(1)).max(1),
    }
}

/// Rough token count for grouping only (English averages about four bytes a token).
fn approx_tokens(text: &str) -> usize {
    text.len() / 4 + 2
}

/// Splits texts (by index) into model calls: sorted by length so each call pads little,
/// at most `max_texts` a call, and at most `max_tokens` padded tokens a call (a longer
/// text goes alone). On CPU, padding and attention over padding cost more than small
/// calls do: measured on all-MiniLM-L6-v2 int8, 2 cores, 256-token chunks ran 1.5x
/// faster one or two at a time than 32 at a time, while 35-token texts ran fastest about
/// 16 at a time.
pub fn length_groups(texts: &[&str], max_texts: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the newest text is the longest in its group.
        let padded = (current.len() + 1) * approx_tokens(texts[i]);
        if !current.is_empty() && (current.len() >= max_texts || padded > max_tokens) {
            groups.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_every_text_once_and_respect_the_budgets() {
        let long = "word ".repeat(200);
        let texts: Vec<&str> = vec!["a", &long, "bb", "ccc", &long, "dddd"];
        let groups = length_groups(&texts, 3, 300);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..texts.len()).collect::<Vec<_>>());
        for group in &groups {
            assert!(group.len() <= 3);
            let longest = group
                .iter()
                .map(|&i| approx_tokens(texts[i]))
                .max()
                .unwrap();
            assert!(
                group.len() == 1 || group.len() * longest <= 300,
                "{group:?}"
            );
        }
        // The two long texts exceed the budget together, so they are embedded apart.
        assert!(groups
            .iter()
            .all(|g| g.iter().filter(|&&i| texts[i].len() > 100).count() <= 1));
    }

    #[test]
    fn sessions_one_per_thread_on_the_cpu_while_the_weights_fit() {
        let small = 23 << 20;
        assert_eq!(session_count(0, Device::Cpu, 2, small), 2);
        assert_eq!(session_count(0, Device::Cpu, 64, small), 44);
        assert_eq!(
            session_count(0, Device::Cpu, 8, 1300 << 20),
            1,
            "a large model"
        );
        assert_eq!(session_count(0, Device::Cuda(0), 8, small), 1);
        assert_eq!(
            session_count(3, Device::Cpu, 8, 1300 << 20),
            3,
            "configured"
        );
    }
}
