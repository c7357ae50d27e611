//! The HTTP endpoints of long-running modes: a local query endpoint (so `freshet query`
//! works while a watcher holds the embedded store) and Prometheus metrics with health
//! checks.
//!
//! Invariant: the query endpoint listens on loopback only and answers only requests that
//! carry the token written (owner-readable only) into the data directory; the metrics
//! endpoint never serves document text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::index::{Index, QueryOptions};
use crate::store::{Filter, Hit, QueryMode};
use crate::telemetry::{prometheus, Health, LiveCounters};
use crate::{Error, Result};

/// Where a running watcher says how to reach its query endpoint.
const ENDPOINT_FILE: &str = "watch.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub pid: u32,
    pub addr: SocketAddr,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    pub text: String,
    pub k: usize,
    #[serde(default)]
    pub source: Option<String>,
    /// dense, sparse or hybrid; absent: hybrid where the index keeps a keyword side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<QueryMode>,
    /// Payload fields that must equal these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// Rerank with the configured cross-encoder; absent: when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<bool>,
}

impl SearchRequest {
    /// The payload conditions: `source` and every `filter` entry.
    pub fn payload_filter(&self) -> Option<Filter> {
        let mut filter = Filter::default();
        if let Some(source) = &self.source {
            filter = filter.field("source_id", source);
        }
        for (key, value) in &self.filter {
            filter = filter.field(key, value);
        }
        (!filter.conditions.is_empty()).then_some(filter)
    }

    pub fn options(&self) -> QueryOptions {
        QueryOptions {
            mode: self.mode,
            rerank: self.rerank,
            filter: self.payload_filter(),
        }
    }
}

struct QueryState {
    index: Arc<Index>,
    token: String,
}

/// Serves `POST /search` on `addr` (loopback) until `cancel`; records the endpoint in the
/// data directory while it runs and removes it after.
pub async fn serve_queries(
    index: Arc<Index>,
    addr: &str,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = bind(addr).await?;
    let local = listener.local_addr().map_err(|source| Error::Io {
        context: format!("query endpoint {addr}"),
        source,
    })?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let file = endpoint_path(&index.config.data_dir);
    write_endpoint(
        &file,
        &Endpoint {
            pid: std::process::id(),
            addr: local,
            token: token.clone(),
        },
    )?;
    tracing::info!(addr = %local, "query endpoint listening");
    let state = Arc::new(QueryState { index, token });
    let app = Router::new()
        .route("/search", post(search))
        .with_state(state);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "query endpoint failed");
        }
        let _ = std::fs::remove_file(&file);
    }))
}

async fn search(
    State(state): State<Arc<QueryState>>,
    headers: HeaderMap,
    Json(request): Json<SearchRequest>,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(state.token.as_str());
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
    }
    let index = &state.index;
    if !index.is_published() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the index is still being built for the configured model; try again when the watcher has caught up",
        )
            .into_response();
    }
    match index
        .query_with(&request.text, request.k.clamp(1, 1000), &request.options())
        .await
    {
        Ok(hits) => Json(hits).into_response(),
        Err(crate::Error::Store(crate::store::StoreError::Rejected(reason))) => {
            (StatusCode::BAD_REQUEST, reason).into_response()
        }
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

struct MetricsState {
    live: Arc<LiveCounters>,
    health: Arc<Health>,
}

/// Serves `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (caught up) on
/// `addr` until `cancel`. Returns the bound address.
pub async fn serve_metrics(
    addr: &str,
    live: Arc<LiveCounters>,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr().map_err(|source| Error::Io {
        context: format!("metrics endpoint {addr}"),
        source,
    })?;
    prometheus();
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(MetricsState { live, health }));
    tracing::info!(addr = %local, "metrics endpoint listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "metrics endpoint failed");
        }
    });
    Ok(local)
}

async fn render_metrics(State(state): State<Arc<MetricsState>>) -> String {
    metrics::gauge!("freshet_queue_depth").set(state.live.in_flight() as f64);
    prometheus().render()
}

async fn healthz(State(state): State<Arc<MetricsState>>) -> Response {
    Json(state.health.report()).into_response()
}

async fn readyz(State(state): State<Arc<MetricsState>>) -> Response {
    let report = state.health.report();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Io {
        context: format!("cannot listen on {addr}"),
        source,
    })
}

fn endpoint_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ENDPOINT_FILE)
}

fn write_endpoint(path: &Path, endpoint: &Endpoint) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let io = |source| Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&serde_json::to_vec(endpoint).expect("endpoint serializes"))
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The endpoint of a watcher running on this data directory, if one says so.
pub fn running_endpoint(data_dir: &Path) -> Option<Endpoint> {
    let bytes = std::fs::read(endpoint_path(data_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Asks a running watcher's query endpoint.
pub async fn remote_search(endpoint: &Endpoint, request: &SearchRequest) -> Result<Vec<Hit>> {
    let failed = |what: String| Error::Io {
        context: format!("query endpoint {}", endpoint.addr),
        source: std::io::Error::other(what),
    };
    let stream = tokio::net::TcpStream::connect(endpoint.addr)
        .await
        .map_err(|source| Error::Io {
            context: format!(
                "cannot reach the watcher's query endpoint {}",
                endpoint.addr
            ),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(connection);
    let body = serde_json::to_vec(request).expect("request serializes");
    let http_request = hyper::Request::post("/search")
        .header("host", endpoint.addr.to_string())
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", endpoint.token))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| failed(e.to_string()))?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    if status == hyper::StatusCode::BAD_REQUEST {
        // The watcher understood and refused the query (a keyword query on a dense-only
        // index): asking the index directly would be refused the same way.
        return Err(Error::Store(crate::store::StoreError::Rejected(
            String::from_utf8_lossy(&bytes).into_owned(),
        )));
    }
    if !status.is_success() {
        return Err(failed(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| failed(format!("bad answer: {e}")))
}
