//! A real OpenAI-compatible `/v1/embeddings` server on loopback for tests: it serves the
//! provisioned ONNX model through ONNX Runtime directly (its own session, tokenizer and
//! mean pooling; not freshet's embedder), so its vectors can be compared with the local
//! embedder's, and it injects the faults a test asks for.
//!
//! Invariant: without a fault, every answer is real embeddings of the texts sent; a text
//! longer than the model's 512-token window is refused with 400, as serving stacks do,
//! never truncated.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

/// The name the server answers with.
pub const SERVED_MODEL: &str = "minilm-l6-int8-served";
const WINDOW: usize = 512;

/// What the server does instead of (or besides) answering.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `Retry-After: n` seconds.
    TooMany(u64),
    /// 500 with a message.
    ServerError,
    /// Answers correctly after this long.
    Slow(Duration),
    /// Vectors one dimension short.
    WrongDimension,
    /// One vector fewer than texts.
    WrongCount,
    /// NaN in the first vector (sent as JSON `null`, as encoders that cannot write NaN do).
    NaN,
    /// Answers with another model's name.
    OtherModel,
}

struct Model {
    session: Mutex<Session>,
    tokenizer: tokenizers::Tokenizer,
    token_types: bool,
}

#[derive(Clone)]
struct Shared {
    model: Arc<Model>,
    /// Faults for the next requests, one each, in order.
    next: Arc<Mutex<VecDeque<Fault>>>,
    /// A fault for every request while set.
    always: Arc<Mutex<Option<Fault>>>,
    requests: Arc<AtomicUsize>,
    texts: Arc<AtomicUsize>,
    key: Option<String>,
}

pub struct EmbedServer {
    pub port: u16,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmbedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EmbedServer {
    /// Starts on a free loopback port; `key`, when given, is required as a bearer token.
    pub async fn start(model_dir: &Path, key: Option<&str>) -> Self {
        let environment = freshet::embed::ort_environment(None).expect("ONNX Runtime");
        let session = Session::builder(&environment)
            .unwrap()
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .unwrap()
            .with_intra_threads(1)
            .unwrap()
            .commit_from_file(model_dir.join("model.onnx"))
            .expect("load model.onnx");
        let token_types = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
        tokenizer.with_truncation(None).unwrap();
        tokenizer.with_padding(None);
        let shared = Shared {
            model: Arc::new(Model {
                session: Mutex::new(session),
                tokenizer,
                token_types,
            }),
            next: Arc::default(),
            always: Arc::default(),
            requests: Arc::default(),
            texts: Arc::default(),
            key: key.map(str::to_string),
        };
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { port, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The next requests meet these faults, one each.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.next.lock().unwrap().extend(faults);
    }

    /// Every request meets `fault` until this is called with `None`.
    pub fn always(&self, fault: Option<Fault>) {
        *self.shared.always.lock().unwrap() = fault;
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Texts the server embedded and answered for.
    pub fn texts(&self) -> usize {
        self.shared.texts.load(Ordering::SeqCst)
    }
}

#[derive(serde::Deserialize)]
struct Request {
    model: String,
    input: Vec<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"message": message, "type": "test"}})),
    )
        .into_response()
}

async fn embeddings(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(request): Json<Request>,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(key) = &shared.key {
        let sent = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if sent != format!("Bearer {key}") {
            return error(StatusCode::UNAUTHORIZED, "invalid api key");
        }
    }
    let fault = shared
        .next
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| shared.always.lock().unwrap().clone());
    match &fault {
        Some(Fault::TooMany(seconds)) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(*seconds));
            return response;
        }
        Some(Fault::ServerError) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "injected failure")
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(*delay).await,
        _ => {}
    }
    let model = shared.model.clone();
    let texts = request.input;
    let count = texts.len();
    let computed = tokio::task::spawn_blocking(move || embed(&model, &texts))
        .await
        .unwrap();
    let mut vectors = match computed {
        Ok(vectors) => vectors,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match fault {
        Some(Fault::WrongDimension) => vectors.iter_mut().for_each(|v| {
            v.pop();
        }),
        Some(Fault::WrongCount) => {
            vectors.pop();
        }
        _ => {}
    }
    let data: Vec<serde_json::Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let values: Vec<serde_json::Value> = v
                .iter()
                .enumerate()
                .map(|(j, x)| {
                    if matches!(fault, Some(Fault::NaN)) && i == 0 && j == 0 {
                        serde_json::Value::Null
                    } else {
                        serde_json::json!(x)
                    }
                })
                .collect();
            serde_json::json!({"object": "embedding", "index": i, "embedding": values})
        })
        .collect();
    let answered = if matches!(fault, Some(Fault::OtherModel)) {
        "some-other-model".to_string()
    } else {
        let _ = request.model;
        SERVED_MODEL.to_string()
    };
    shared.texts.fetch_add(count, Ordering::SeqCst);
    Json(serde_json::json!({
        "object": "list",
        "data": data,
        "model": answered,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
    .into_response()
}

/// Real embeddings: tokenize with special tokens, pad to the batch's longest, run, mean
/// over real tokens, normalize.
fn embed(model: &Model, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let encodings = model
        .tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| e.to_string())?;
    if let Some((i, e)) = encodings.iter().enumerate().find(|(_, e)| e.len() > WINDOW) {
        return Err(format!(
            "input {i} has {} tokens; this model takes at most {WINDOW}",
            e.len()
        ));
    }
    let width = encodings.iter().map(|e| e.len()).max().unwrap_or(1);
    let rows = encodings.len();
    let mut ids = vec![0i64; rows * width];
    let mut mask = vec![0i64; rows * width];
    for (r, e) in encodings.iter().enumerate() {
        for (c, id) in e.get_ids().iter().enumerate() {
            ids[r * width + c] = *id as i64;
            mask[r * width + c] = 1;
        }
    }
    let shape = [rows as i64, width as i64];
    let mut inputs = ort::inputs![
        "input_ids" => Tensor::from_array((shape, ids)).unwrap(),
        "attention_mask" => Tensor::from_array((shape, mask.clone())).unwrap(),
    ];
    if model.token_types {
        inputs.push((
            "token_type_ids".into(),
            Tensor::from_array((shape, vec![0i64; rows * width]))
                .unwrap()
                .into(),
        ));
    }
    let mut session = model.session.lock().unwrap();
    let outputs = session.run(inputs).map_err(|e| e.to_string())?;
    let (out_shape, hidden) = outputs[0]
        .try_extract_tensor::<f32>()
        .map_err(|e| e.to_string())?;
    let dim = out_shape[2] as usize;
    let mut vectors = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut sum = vec![0f32; dim];
        let mut n = 0f32;
        for c in 0..width {
            if mask[r * width + c] == 1 {
                let base = (r * width + c) * dim;
                for (d, s) in sum.iter_mut().enumerate() {
                    *s += hidden[base + d];
                }
                n += 1.0;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| s / n).collect();
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        vectors.push(mean.iter().map(|x| x / norm).collect());
    }
    Ok(vectors)
}
