//! An embedder that calls an OpenAI-compatible `/v1/embeddings` service (OpenAI, Hugging
//! Face Text Embeddings Inference, vLLM, Ollama, Infinity, ...).
//!
//! Invariant: every answer is checked before a vector leaves this module: one finite
//! vector of the connect-time dimension per input, each index exactly once, from the
//! model the service named at connect time. A batch whose answer fails any check, or that
//! still fails after its retries, yields an error and no vectors, so nothing of it is
//! stored or vouched for. No text longer than the model's window is ever sent.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{EmbedError, Embedder, Tokens};
use crate::config::EmbeddingConfig;

/// The longest a service's `Retry-After` is honoured; longer asks wait this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Backoff when the service gives no `Retry-After`: 0.5 s doubling, at most 20 s, with
/// jitter so that many workers do not come back at the same instant.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(20);
/// How much of an error body goes into a message.
const BODY_EXCERPT: usize = 300;

pub struct OpenAiEmbedder {
    endpoint: reqwest::Url,
    /// `host:port`, the only part of the URL messages name.
    target: String,
    model: String,
    model_id: String,
    /// The model name the service answered the connect-time probe with.
    answered_model: Option<String>,
    dimensions: Option<usize>,
    dim: usize,
    tokens: Tokens,
    window: usize,
    max_concurrency: usize,
    max_batch_texts: usize,
    max_batch_tokens: usize,
    max_retries: u32,
    client: reqwest::Client,
    /// Drives the HTTP requests; `embed` is called from blocking threads.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("target", &self.target)
            .field("model", &self.model)
            .field("dim", &self.dim)
            .finish()
    }
}

impl Drop for OpenAiEmbedder {
    fn drop(&mut self) {
        // Dropped wherever the index is, possibly on an async thread, where a blocking
        // shutdown would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Debug, Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EmbeddingItem {
    index: usize,
    /// `null` stands for NaN in JSON encoders that will not write NaN.
    embedding: Vec<Option<f32>>,
}

/// Why one request did not produce vectors, and whether trying again may help.
enum Failure {
    Retry {
        reason: String,
        /// What the service asked for (`Retry-After`); else the backoff decides.
        after: Option<Duration>,
        throttled: bool,
    },
    Fatal(EmbedError),
}

impl OpenAiEmbedder {
    /// Connects: checks the settings, then sends one probe request that learns the
    /// vector length and the model's name, so a wrong URL, key or model fails here, naming
    /// `host:port`, rather than document by document.
    pub fn connect(config: &EmbeddingConfig) -> Result<Self, EmbedError> {
        let setting = |reason: String| EmbedError::Load {
            path: "[embedding]".into(),
            reason,
        };
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| setting("provider = \"openai\" needs `url`".into()))?;
        let model = config
            .model
            .clone()
            .ok_or_else(|| setting("provider = \"openai\" needs `model`".into()))?;
        let endpoint = endpoint_url(url).map_err(setting)?;
        let target = format!(
            "{}:{}",
            endpoint.host_str().unwrap_or("?"),
            endpoint.port_or_known_default().unwrap_or(0)
        );
        let tokenizer = config.service_tokenizer().map_err(setting)?;
        let tokens = Tokens::named(&tokenizer).map_err(|reason| EmbedError::Load {
            path: tokenizer.clone(),
            reason,
        })?;
        let window = config.input_window().map_err(setting)?;
        let mut headers = HeaderMap::new();
        if let Some(var) = &config.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                setting(format!(
                    "api_key_env names `{var}`, which is not set in the environment"
                ))
            })?;
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                .map_err(|_| setting(format!("`{var}` holds characters a header cannot carry")))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs_f64(config.timeout_s))
            .connect_timeout(Duration::from_secs_f64(config.timeout_s.min(10.0)))
            .user_agent(concat!("freshet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| setting(format!("cannot build the HTTP client: {err}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("freshet-embed-http")
            .enable_all()
            .build()
            .map_err(|err| setting(format!("cannot start the HTTP runtime: {err}")))?;
        let mut embedder = Self {
            endpoint,
            target,
            model_id: config
                .model_id
                .clone()
                .unwrap_or_else(|| format!("openai/{model}")),
            model,
            answered_model: None,
            dimensions: config.dimensions,
            dim: 0,
            tokens,
            window,
            max_concurrency: config.max_concurrency.max(1),
            max_batch_texts: config.max_batch_texts.max(1),
            max_batch_tokens: config.max_batch_tokens.max(1),
            // A service that is still starting gets a few tries; a dead one fails fast.
            max_retries: config.max_retries.min(2),
            client,
            runtime: Some(runtime),
        };
        let probe = ["dimension probe"];
        let (vectors, answered) = embedder
            .block_on(embedder.post(&probe, probe_tokens(&embedder.tokens, &probe), None))
            .map_err(|err| EmbedError::Load {
                path: embedder.target.clone(),
                reason: err.to_string(),
            })?;
        let dim = vectors.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(EmbedError::Load {
                path: embedder.target.clone(),
                reason: "the service answered an empty vector".into(),
            });
        }
        if let Some(wanted) = config.dimensions {
            if wanted != dim {
                return Err(EmbedError::Load {
                    path: embedder.target.clone(),
                    reason: format!("embedding.dimensions = {wanted}, but the service answered vectors of {dim}"),
                });
            }
        }
        embedder.dim = dim;
        embedder.answered_model = answered;
        embedder.max_retries = config.max_retries;
        tracing::info!(service = %embedder.target, model = %embedder.model, dim, "embedding through an OpenAI-compatible service");
        Ok(embedder)
    }

    fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the embedder")
            .block_on(future)
    }

    /// Sends one batch, retrying what may pass, and checks the answer. `expect_dim` is
    /// `None` only for the connect-time probe.
    async fn post(
        &self,
        texts: &[&str],
        tokens: usize,
        expect_dim: Option<usize>,
    ) -> Result<(Vec<Vec<f32>>, Option<String>), EmbedError> {
        let mut body = serde_json::json!({
            "model": self.model,
            "input": texts,
            "encoding_format": "float",
        });
        if let Some(dimensions) = self.dimensions {
            body["dimensions"] = dimensions.into();
        }
        let mut attempt = 0u32;
        loop {
            let failure = match self.attempt(&body).await {
                Ok(bytes) => {
                    metrics::counter!("freshet_embed_requests_total", "outcome" => "ok")
                        .increment(1);
                    metrics::counter!("freshet_embed_tokens_sent_total").increment(tokens as u64);
                    return self.check(&bytes, texts.len(), expect_dim);
                }
                Err(failure) => failure,
            };
            let (reason, after, throttled) = match failure {
                Failure::Retry {
                    reason,
                    after,
                    throttled,
                } => (reason, after, throttled),
                Failure::Fatal(err) => {
                    metrics::counter!("freshet_embed_requests_total", "outcome" => "error")
                        .increment(1);
                    return Err(err);
                }
            };
            if attempt >= self.max_retries {
                metrics::counter!("freshet_embed_requests_total", "outcome" => "error")
                    .increment(1);
                return Err(EmbedError::Unavailable(format!(
                    "the embedding service at {}: {reason} (gave up after {} tries)",
                    self.target,
                    attempt + 1
                )));
            }
            let wait = after
                .map(|d| d.min(MAX_RETRY_AFTER))
                .unwrap_or_else(|| backoff(attempt));
            metrics::counter!("freshet_embed_requests_total", "outcome" => "retried").increment(1);
            metrics::counter!("freshet_embed_retries_total").increment(1);
            if throttled {
                metrics::gauge!("freshet_embed_throttled_seconds_total")
                    .increment(wait.as_secs_f64());
            }
            tracing::warn!(service = %self.target, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, %reason, "embedding request failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange: the body of a 2xx answer, or why there is none.
    async fn attempt(&self, body: &serde_json::Value) -> Result<Vec<u8>, Failure> {
        let transport = |err: reqwest::Error| {
            let reason = if err.is_timeout() {
                "no answer within embedding.timeout_s".to_string()
            } else {
                format!("cannot reach it: {}", root_cause(&err))
            };
            Failure::Retry {
                reason,
                after: None,
                throttled: false,
            }
        };
        let response = self
            .client
            .post(self.endpoint.clone())
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(transport);
        }
        let after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let message = excerpt(&text);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Failure::Retry {
                reason: format!("answered {status}: {message}"),
                after,
                throttled: status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE,
            });
        }
        if matches!(status.as_u16(), 400 | 413 | 422) {
            return Err(Failure::Fatal(EmbedError::Rejected(format!(
                "the embedding service at {} refused the input ({status}): {message}",
                self.target
            ))));
        }
        Err(Failure::Fatal(EmbedError::Service(format!(
            "the embedding service at {} answered {status}: {message}; check embedding.url, embedding.model and the API key",
            self.target
        ))))
    }

    /// Checks an answer against the request; see the module invariant.
    fn check(
        &self,
        bytes: &[u8],
        count: usize,
        expect_dim: Option<usize>,
    ) -> Result<(Vec<Vec<f32>>, Option<String>), EmbedError> {
        let bad = |reason: String| {
            EmbedError::Service(format!(
                "the embedding service at {} answered {reason}; nothing of this batch was stored",
                self.target
            ))
        };
        let response: EmbeddingsResponse = serde_json::from_slice(bytes).map_err(|err| {
            bad(format!(
                "something that is not an embeddings response ({err}): {}",
                excerpt(&String::from_utf8_lossy(bytes))
            ))
        })?;
        if response.data.len() != count {
            return Err(bad(format!(
                "{} vectors for {count} texts",
                response.data.len()
            )));
        }
        if let (Some(before), Some(now)) = (&self.answered_model, &response.model) {
            if before != now {
                return Err(bad(format!(
                    "with model `{now}`, but with `{before}` when freshet connected: the model behind the service changed; restart freshet (a different model is a new index)"
                )));
            }
        }
        let dim =
            expect_dim.unwrap_or_else(|| response.data.first().map_or(0, |d| d.embedding.len()));
        let mut out: Vec<Option<Vec<f32>>> = vec![None; count];
        for item in response.data {
            if item.index >= count || out[item.index].is_some() {
                return Err(bad(format!(
                    "index {} twice or out of range for {count} texts",
                    item.index
                )));
            }
            if item.embedding.len() != dim {
                return Err(bad(format!(
                    "a vector of {} dimensions for text {}, expected {dim}",
                    item.embedding.len(),
                    item.index
                )));
            }
            let vector: Option<Vec<f32>> = item
                .embedding
                .iter()
                .map(|v| v.filter(|v| v.is_finite()))
                .collect();
            let Some(vector) = vector else {
                return Err(bad(format!(
                    "a vector with NaN or infinite values for text {}",
                    item.index
                )));
            };
            out[item.index] = Some(vector);
        }
        Ok((
            out.into_iter()
                .map(|v| v.expect("every index seen once"))
                .collect(),
            response.model,
        ))
    }

    /// Splits texts (by index, in order) into requests within the text and token limits.
    fn batches(&self, counts: &[usize]) -> Vec<std::ops::Range<usize>> {
        let mut batches = Vec::new();
        let (mut start, mut tokens) = (0, 0);
        for (i, &count) in counts.iter().enumerate() {
            if i > start
                && (i - start >= self.max_batch_texts || tokens + count > self.max_batch_tokens)
            {
                batches.push(start..i);
                (start, tokens) = (i, 0);
            }
            tokens += count;
        }
        if start < counts.len() {
            batches.push(start..counts.len());
        }
        batches
    }
}

impl Embedder for OpenAiEmbedder {
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
        let counts: Vec<usize> = texts.iter().map(|t| self.tokens.count(t)).collect();
        if let Some((i, &count)) = counts.iter().enumerate().find(|(_, &c)| c > self.window) {
            return Err(EmbedError::Rejected(format!(
                "text {i} of the batch has {count} tokens, more than the model's window of {} (embedding.max_input_tokens); it is not sent truncated: lower chunking.max_tokens",
                self.window
            )));
        }
        let started = Instant::now();
        let batches = self.batches(&counts);
        let results: Vec<Vec<Vec<f32>>> = self.block_on(
            futures::stream::iter(batches.into_iter().map(|range| {
                let tokens = counts[range.clone()].iter().sum();
                let batch = &texts[range];
                async move {
                    self.post(batch, tokens, Some(self.dim))
                        .await
                        .map(|(vectors, _)| vectors)
                }
            }))
            .buffered(self.max_concurrency)
            .try_collect(),
        )?;
        tracing::debug!(
            texts = texts.len(),
            ms = started.elapsed().as_millis() as u64,
            "embedded through the service"
        );
        Ok(results.into_iter().flatten().collect())
    }
}

fn probe_tokens(tokens: &Tokens, texts: &[&str]) -> usize {
    texts.iter().map(|t| tokens.count(t)).sum()
}

/// `…/v1` gets `/embeddings` appended; a URL already ending in `/embeddings` is kept.
fn endpoint_url(url: &str) -> Result<reqwest::Url, String> {
    let trimmed = url.trim_end_matches('/');
    let full = if trimmed.ends_with("/embeddings") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/embeddings")
    };
    let parsed = reqwest::Url::parse(&full).map_err(|err| format!("url = {url:?}: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url = {url:?} is not http:// or https://"));
    }
    Ok(parsed)
}

/// `Retry-After` in seconds (OpenAI also sends `retry-after-ms`); an HTTP date is not
/// honoured and the backoff decides.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let read = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(ms) = read("retry-after-ms").filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    read("retry-after")
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Capped exponential backoff with jitter: a random point in the upper half of the step.
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(BACKOFF_CAP);
    step / 2 + step.mul_f64(fastrand::f64() / 2.0)
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_string(),
    }
}

/// The innermost error's message ("Connection refused"), without the URL.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_a_base_or_the_full_url() {
        assert_eq!(
            endpoint_url("http://h:8080/v1").unwrap().as_str(),
            "http://h:8080/v1/embeddings"
        );
        assert_eq!(
            endpoint_url("https://api.openai.com/v1/embeddings/")
                .unwrap()
                .as_str(),
            "https://api.openai.com/v1/embeddings"
        );
        assert!(endpoint_url("ftp://h/v1").is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        let mut date = HeaderMap::new();
        date.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&date), None);
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        for attempt in 0..20 {
            let wait = backoff(attempt);
            let step = BACKOFF_BASE
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(BACKOFF_CAP);
            assert!(wait >= step / 2 && wait <= step, "{attempt}: {wait:?}");
        }
        assert!(backoff(30) <= BACKOFF_CAP);
    }
}
