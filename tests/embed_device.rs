//! `embedding.device`: the CUDA path compiles everywhere and, where no GPU can be used,
//! fails with a message naming what is missing, or falls back to the CPU only when
//! `fallback = "cpu"` says so. Where a GPU can be used, its vectors agree with the CPU's.

mod common;

use freshet::config::{Device, DeviceFallback, EmbeddingConfig};
use freshet::embed::{Embedder, FastEmbedder};

fn on(device: &str, fallback: Option<DeviceFallback>) -> EmbeddingConfig {
    EmbeddingConfig {
        device: device.into(),
        fallback,
        ..EmbeddingConfig::default()
    }
}

// One test, in this order, because ONNX Runtime is loaded once per process: the CUDA
// attempt must come before anything loads the CPU build.
#[test]
fn cuda_is_used_or_refused_clearly_and_the_cpu_stands_in_only_when_allowed() {
    let texts = [
        "refund policy",
        "How do I return an item I bought online? Keep the receipt and the original box.",
    ];
    match FastEmbedder::load(&on("cuda:0", None)) {
        Ok(gpu) => {
            assert_eq!(gpu.device(), Device::Cuda(0));
            let cpu = FastEmbedder::load(&on("cpu", None)).unwrap();
            assert_eq!(
                gpu.model_id(),
                cpu.model_id(),
                "the device is not in the model id"
            );
            let (g, c) = (gpu.embed(&texts).unwrap(), cpu.embed(&texts).unwrap());
            for (a, b) in g.iter().zip(&c) {
                let cos = common::cosine(a, b);
                println!("cosine CUDA vs CPU: {cos:.6}");
                assert!(cos >= 0.999, "{cos}");
            }
        }
        Err(err) => {
            let message = err.to_string();
            println!("no usable GPU here, as expected on a CPU machine: {message}");
            assert!(
                message.contains("provision --gpu")
                    || message.contains("CUDA")
                    || message.contains("cuda"),
                "the error names what is missing: {message}"
            );
            let fallen_back = FastEmbedder::load(&on("cuda:0", Some(DeviceFallback::Cpu)))
                .expect("fallback = \"cpu\" loads on the CPU");
            assert_eq!(fallen_back.device(), Device::Cpu);
            assert_eq!(fallen_back.embed(&texts).unwrap().len(), 2);
        }
    }
    let refused = FastEmbedder::load(&on("gpu0", None))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("\"cuda:N\""), "{refused}");
}
