//! A Qdrant server or cluster over gRPC (`qdrant-client`'s generated clients on a channel
//! of our own, for TLS with a private CA and an API key header). Applications query an
//! alias; freshet writes into `<alias>__<model>-<dim>[-bm25]` collections that carry a
//! `freshet` entry in their metadata. With a keyword side, a collection has a named dense
//! vector and a named sparse BM25 vector with the IDF modifier, and hybrid queries fuse
//! both in the server (the Query API with prefetches and RRF).
//!
//! Invariants: every write waits until it is applied (`wait = true`) before it returns;
//! the alias moves in one `update_aliases` call (atomic for readers); a collection without
//! freshet's metadata entry for this alias is never written to, aliased or dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use qdrant_client::qdrant::{
    alias_operations::Action, collections_client::CollectionsClient, points_client::PointsClient,
    qdrant_client::QdrantClient as HealthClient, vector_output::Vector as VectorOutput,
    vectors_config::Config as VectorsConfigKind, AliasOperations, ChangeAliases,
    CollectionExistsRequest, Condition, CountPointsBuilder, CreateAlias, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeleteAlias, DeleteCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, GetCollectionInfoRequest, HealthCheckRequest, ListAliasesRequest,
    ListCollectionsRequest, Modifier, NamedVectors, PointId as QPointId, PointStruct,
    PointsIdsList, PrefetchQueryBuilder, Query as QQuery, QueryPointsBuilder, RrfBuilder,
    ScrollPointsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    UpsertPointsBuilder, Vector as QVector, VectorInput, VectorParamsBuilder, VectorsConfigBuilder,
    WriteOrdering, WriteOrderingType,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{
    collection_slug, with_retry, Catalog, Filter, Hit, IndexInfo, Payload, Point, PointId, Query,
    QueryMode, SparseKind, StoreError, StoredPoint, VectorStore, DENSE_VECTOR, INDEXED_FIELDS,
    SPARSE_VECTOR,
};
use crate::config::{QdrantConfig, WriteOrderingConfig};

/// Attempts of one call before a transient error reaches the caller (the pipeline retries
/// writes again on top, with its own backoff).
const ATTEMPTS: u32 = 4;
/// The metadata key that marks a collection as freshet's.
const MARKER: &str = "freshet";

/// Adds the API key header to every request (marked sensitive, so it is never logged).
#[derive(Clone)]
struct ApiKey(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("api-key", key.clone());
        }
        Ok(request)
    }
}

type Service = InterceptedService<Channel, ApiKey>;

/// The server, its alias and the settings for new collections.
pub struct QdrantCatalog {
    settings: QdrantConfig,
    /// `host:port`, for messages (the URL may carry credentials; this never does).
    target: String,
    collections: CollectionsClient<Service>,
    points: PointsClient<Service>,
}

impl std::fmt::Debug for QdrantCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantCatalog")
            .field("target", &self.target)
            .field("alias", &self.settings.collection)
            .finish()
    }
}

/// Only `host:port` of a URL: never user info, path or query.
fn host_of(url: &str) -> String {
    match url.parse::<tonic::codegen::http::Uri>() {
        Ok(uri) => match (uri.host(), uri.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => "the configured URL".into(),
        },
        Err(_) => "the configured URL".into(),
    }
}

fn status_error(status: Status) -> StoreError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled => StoreError::Operation(message),
        _ => StoreError::Rejected(message),
    }
}

impl QdrantCatalog {
    /// Connects and checks the server answers (and accepts the API key).
    pub async fn connect(settings: &QdrantConfig) -> Result<Self, StoreError> {
        let target = host_of(&settings.url);
        let unreachable = |reason: String| StoreError::Unreachable {
            target: target.clone(),
            reason,
        };
        let api_key = match &settings.api_key_env {
            Some(var) => {
                let key = std::env::var(var).map_err(|_| StoreError::Open {
                    target: target.clone(),
                    reason: format!("the environment variable {var} (the API key) is not set"),
                })?;
                let mut value: tonic::metadata::AsciiMetadataValue =
                    key.parse().map_err(|_| StoreError::Open {
                        target: target.clone(),
                        reason: format!("the API key in {var} is not a valid header value"),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let timeout = Duration::from_secs(settings.timeout_s);
        let mut endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|_| StoreError::Open {
                target: target.clone(),
                reason: "store.url is not a valid URL".into(),
            })?
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .tcp_nodelay(true);
        if settings.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(path) = &settings.ca_cert {
                let pem = std::fs::read(path).map_err(|err| StoreError::Open {
                    target: target.clone(),
                    reason: format!("cannot read store.ca_cert {}: {err}", path.display()),
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| unreachable(format!("TLS setup failed: {err}")))?;
        }
        let channel = endpoint.connect_lazy();
        let interceptor = ApiKey(api_key);
        let mut health = HealthClient::with_interceptor(channel.clone(), interceptor.clone());
        match health.health_check(HealthCheckRequest {}).await {
            Ok(reply) => {
                // Collection metadata, which marks freshet's collections, came in 1.16;
                // an older server would drop it, and freshet would then refuse its own.
                let version = reply.into_inner().version;
                if !at_least(&version, (1, 16)) {
                    return Err(StoreError::Open {
                        target: target.clone(),
                        reason: format!(
                            "Qdrant {version} is too old: freshet needs 1.16 or newer (it marks its collections with collection metadata)"
                        ),
                    });
                }
            }
            Err(status)
                if status.code() == Code::Unauthenticated
                    || status.code() == Code::PermissionDenied =>
            {
                return Err(unreachable(match &settings.api_key_env {
                    Some(var) => format!("the server refused the API key in {var}"),
                    None => "the server wants an API key: set store.api_key_env".into(),
                }))
            }
            Err(status) => return Err(unreachable(describe_transport(&status))),
        }
        let catalog = Self {
            settings: settings.clone(),
            target: target.clone(),
            collections: CollectionsClient::with_interceptor(channel.clone(), interceptor.clone()),
            points: PointsClient::with_interceptor(channel, interceptor),
        };
        // Health checks are public on a Qdrant server; a read shows whether the key works.
        catalog.aliases().await.map_err(|err| match err {
            StoreError::Rejected(reason) => unreachable(reason),
            other => other,
        })?;
        Ok(catalog)
    }

    fn alias(&self) -> &str {
        &self.settings.collection
    }

    async fn aliases(&self) -> Result<HashMap<String, String>, StoreError> {
        let response = rpc(
            "list aliases",
            &self.collections,
            ListAliasesRequest {},
            |mut c, r| async move { c.list_aliases(r).await },
        )
        .await?;
        Ok(response
            .aliases
            .into_iter()
            .map(|a| (a.alias_name, a.collection_name))
            .collect())
    }

    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        let response = rpc(
            "collection exists",
            &self.collections,
            CollectionExistsRequest {
                collection_name: name.to_string(),
            },
            |mut c, r| async move { c.collection_exists(r).await },
        )
        .await?;
        Ok(response.result.is_some_and(|r| r.exists))
    }

    /// A collection's freshet marker (`None` when it has none) and its vector settings.
    async fn describe(
        &self,
        name: &str,
    ) -> Result<(Option<serde_json::Value>, VectorLayout), StoreError> {
        let response = rpc(
            "collection info",
            &self.collections,
            GetCollectionInfoRequest {
                collection_name: name.to_string(),
            },
            |mut c, r| async move { c.get(r).await },
        )
        .await?;
        let config = response.result.and_then(|r| r.config);
        let marker = config
            .as_ref()
            .and_then(|c| c.metadata.get(MARKER).cloned())
            .map(|v| v.into_json());
        let params = config.and_then(|c| c.params);
        let bm25 = params
            .as_ref()
            .and_then(|p| p.sparse_vectors_config.as_ref())
            .and_then(|s| s.map.get(SPARSE_VECTOR))
            .map(|s| s.modifier == Some(Modifier::Idf as i32));
        let layout = match params.and_then(|p| p.vectors_config).and_then(|v| v.config) {
            Some(VectorsConfigKind::Params(params)) => VectorLayout {
                dense: Some((params.size, params.distance)),
                named: false,
                bm25,
            },
            Some(VectorsConfigKind::ParamsMap(map)) => VectorLayout {
                dense: map
                    .map
                    .get(DENSE_VECTOR)
                    .map(|params| (params.size, params.distance)),
                named: true,
                bm25,
            },
            None => VectorLayout {
                dense: None,
                named: false,
                bm25,
            },
        };
        Ok((marker, layout))
    }

    /// The model a collection holds, when freshet made it for this alias.
    fn owned_info(&self, name: &str, marker: Option<&serde_json::Value>) -> Option<IndexInfo> {
        let marker = marker?;
        if marker["alias"].as_str() != Some(self.alias()) {
            return None;
        }
        Some(IndexInfo {
            collection: name.to_string(),
            model_id: marker["model_id"].as_str()?.to_string(),
            dim: marker["dim"].as_u64()? as usize,
            sparse: serde_json::from_value(marker["sparse"].clone()).unwrap_or(None),
        })
    }

    /// Refuses a collection that freshet did not make for this alias, or whose vectors
    /// are not the model's.
    async fn check_owned(&self, info: &IndexInfo) -> Result<(), StoreError> {
        let (marker, layout) = self.describe(&info.collection).await?;
        if self.owned_info(&info.collection, marker.as_ref()).is_none() {
            return Err(StoreError::NotOurs {
                name: format!("Qdrant collection `{}`", info.collection),
            });
        }
        let keywords = info.sparse == Some(SparseKind::Bm25);
        if layout.named != keywords || (layout.bm25 == Some(true)) != keywords {
            let describe = |named: bool, bm25: Option<bool>| match (named, bm25) {
                (false, None) => "one unnamed dense vector".to_string(),
                (true, Some(true)) => {
                    format!("named vectors `{DENSE_VECTOR}` and `{SPARSE_VECTOR}` (BM25 with the IDF modifier)")
                }
                (true, _) => {
                    "named vectors without a BM25 sparse vector with the IDF modifier".into()
                }
                (false, Some(_)) => "an unnamed dense vector and a sparse vector".into(),
            };
            return Err(StoreError::Mismatch {
                collection: format!("Qdrant collection `{}`", info.collection),
                existing: describe(layout.named, layout.bm25),
                wanted: describe(keywords, keywords.then_some(true)),
            });
        }
        let cosine = Distance::Cosine as i32;
        match layout.dense {
            Some((size, distance)) if size as usize == info.dim && distance == cosine => Ok(()),
            Some((size, distance)) => Err(StoreError::Mismatch {
                collection: format!("Qdrant collection `{}`", info.collection),
                existing: format!(
                    "{size}-dimensional vectors with {} distance",
                    Distance::try_from(distance)
                        .map_or("unknown".into(), |d| d.as_str_name().to_lowercase())
                ),
                wanted: format!("{}-dimensional vectors with cosine distance", info.dim),
            }),
            None => Err(StoreError::Mismatch {
                collection: format!("Qdrant collection `{}`", info.collection),
                existing: "named vectors".into(),
                wanted: format!("one unnamed {}-dimensional cosine vector", info.dim),
            }),
        }
    }

    fn store(&self, info: &IndexInfo) -> QdrantStore {
        QdrantStore {
            points: self.points.clone(),
            collection: info.collection.clone(),
            dim: info.dim,
            keywords: info.sparse == Some(SparseKind::Bm25),
            ordering: match self.settings.write_ordering {
                WriteOrderingConfig::Weak => WriteOrderingType::Weak,
                WriteOrderingConfig::Medium => WriteOrderingType::Medium,
                WriteOrderingConfig::Strong => WriteOrderingType::Strong,
            },
            batch_points: self.settings.batch_points,
            max_request_bytes: self.settings.max_request_bytes,
            max_in_flight: self.settings.max_in_flight,
        }
    }

    async fn create(&self, info: &IndexInfo) -> Result<(), StoreError> {
        let s = &self.settings;
        let marker: HashMap<String, serde_json::Value> = HashMap::from([(
            MARKER.to_string(),
            serde_json::json!({
                "alias": self.alias(),
                "model_id": info.model_id,
                "dim": info.dim,
                "sparse": info.sparse,
                "created_by": format!("freshet {}", env!("CARGO_PKG_VERSION")),
            }),
        )]);
        let dense = VectorParamsBuilder::new(info.dim as u64, Distance::Cosine).on_disk(s.on_disk);
        let mut request = CreateCollectionBuilder::new(info.collection.clone());
        if info.sparse == Some(SparseKind::Bm25) {
            let mut vectors = VectorsConfigBuilder::default();
            vectors.add_named_vector_params(DENSE_VECTOR, dense);
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(
                SPARSE_VECTOR,
                SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
            );
            request = request
                .vectors_config(vectors)
                .sparse_vectors_config(sparse);
        } else {
            request = request.vectors_config(dense);
        }
        let request = request
            .shard_number(s.shard_number)
            .replication_factor(s.replication_factor)
            .write_consistency_factor(s.write_consistency_factor)
            .on_disk_payload(s.on_disk)
            .metadata(marker)
            .build();
        let created = rpc(
            "create collection",
            &self.collections,
            request,
            |mut c, r| async move { c.create(r).await },
        )
        .await;
        match created {
            Ok(_) => {
                tracing::info!(collection = %info.collection, target = %self.target, "created a Qdrant collection");
                Ok(())
            }
            // Another process created it first: whether it is ours is checked next.
            Err(_) if self.exists(&info.collection).await? => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// One gRPC call with its retries: each attempt calls `call` with a clone of the client
/// and of the request; the reply's body is returned.
async fn rpc<C, R, T, F, Fut>(what: &str, client: &C, request: R, call: F) -> Result<T, StoreError>
where
    C: Clone,
    R: Clone,
    F: Fn(C, R) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    with_retry(what, ATTEMPTS, || {
        let reply = call(client.clone(), request.clone());
        async move {
            reply
                .await
                .map(tonic::Response::into_inner)
                .map_err(status_error)
        }
    })
    .await
}

/// A readable cause for a failed connection, without the URL (which may carry
/// credentials in its user info).
fn describe_transport(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[async_trait]
impl Catalog for QdrantCatalog {
    fn location(&self) -> String {
        format!("qdrant://{}", self.target)
    }

    fn published_name(&self) -> String {
        format!("alias `{}` on {}", self.alias(), self.target)
    }

    fn sparse_kind(&self) -> SparseKind {
        SparseKind::Bm25
    }

    fn collection_name(&self, model_id: &str, dim: usize, sparse: Option<SparseKind>) -> String {
        format!(
            "{}__{}",
            self.alias(),
            collection_slug(model_id, dim, sparse)
        )
    }

    async fn published(&self) -> Result<Option<IndexInfo>, StoreError> {
        let aliases = self.aliases().await?;
        let Some(collection) = aliases.get(self.alias()) else {
            if self.exists(self.alias()).await? {
                return Err(StoreError::NotOurs {
                    name: format!(
                        "Qdrant collection `{}` (freshet needs the name for an alias)",
                        self.alias()
                    ),
                });
            }
            return Ok(None);
        };
        let (marker, _) = self.describe(collection).await?;
        match self.owned_info(collection, marker.as_ref()) {
            Some(info) => Ok(Some(info)),
            None => Err(StoreError::NotOurs {
                name: format!("alias `{}` (it points at `{collection}`)", self.alias()),
            }),
        }
    }

    async fn open(&self, info: &IndexInfo) -> Result<Arc<dyn VectorStore>, StoreError> {
        if !self.exists(&info.collection).await? {
            self.create(info).await?;
        }
        self.check_owned(info).await?;
        // Idempotent: also completes a creation that a crash interrupted.
        for field in INDEXED_FIELDS {
            let request = CreateFieldIndexCollectionBuilder::new(
                info.collection.clone(),
                field,
                FieldType::Keyword,
            )
            .wait(true)
            .build();
            rpc(
                "create payload index",
                &self.points,
                request,
                |mut c, r| async move { c.create_field_index(r).await },
            )
            .await?;
        }
        Ok(Arc::new(self.store(info)))
    }

    async fn open_existing(
        &self,
        info: &IndexInfo,
    ) -> Result<Option<Arc<dyn VectorStore>>, StoreError> {
        if !self.exists(&info.collection).await? {
            return Ok(None);
        }
        self.check_owned(info).await?;
        Ok(Some(Arc::new(self.store(info))))
    }

    async fn publish(&self, info: &IndexInfo) -> Result<(), StoreError> {
        self.check_owned(info).await?;
        let aliases = self.aliases().await?;
        let current = aliases.get(self.alias());
        if current != Some(&info.collection) {
            // Refuses an alias or collection of that name that is not freshet's.
            self.published().await?;
            let mut actions = Vec::new();
            if current.is_some() {
                actions.push(AliasOperations {
                    action: Some(Action::DeleteAlias(DeleteAlias {
                        alias_name: self.alias().to_string(),
                    })),
                });
            }
            actions.push(AliasOperations {
                action: Some(Action::CreateAlias(CreateAlias {
                    collection_name: info.collection.clone(),
                    alias_name: self.alias().to_string(),
                })),
            });
            // One call: readers see the old collection or the new one, never neither.
            let request = ChangeAliases {
                actions,
                timeout: None,
            };
            rpc(
                "update aliases",
                &self.collections,
                request,
                |mut c, r| async move { c.update_aliases(r).await },
            )
            .await?;
            tracing::info!(alias = %self.alias(), collection = %info.collection, "alias switched");
        }
        // Also after a switch that stopped before this step.
        if let Err(err) = self.drop_others(info).await {
            tracing::warn!(error = %err, "could not drop the collections of previous models; the next publish tries again");
        }
        Ok(())
    }
}

impl QdrantCatalog {
    /// Drops freshet's other collections for this alias (previous models), but never one
    /// that any alias points at: Qdrant deletes a collection's aliases with it.
    async fn drop_others(&self, info: &IndexInfo) -> Result<(), StoreError> {
        let listed = rpc(
            "list collections",
            &self.collections,
            ListCollectionsRequest {},
            |mut c, r| async move { c.list(r).await },
        )
        .await?;
        let prefix = format!("{}__", self.alias());
        for old in listed.collections {
            if old.name == info.collection || !old.name.starts_with(&prefix) {
                continue;
            }
            let (marker, _) = self.describe(&old.name).await?;
            if self.owned_info(&old.name, marker.as_ref()).is_none() {
                continue;
            }
            // Checked right before the delete: another writer may have just aliased it.
            if self.aliases().await?.values().any(|c| c == &old.name) {
                tracing::info!(collection = %old.name, "kept: an alias points at it");
                continue;
            }
            tracing::info!(collection = %old.name, "dropping the collection of a previous model");
            let request = DeleteCollectionBuilder::new(old.name.clone()).build();
            rpc(
                "delete collection",
                &self.collections,
                request,
                |mut c, r| async move { c.delete(r).await },
            )
            .await?;
        }
        Ok(())
    }
}

/// Whether a `major.minor.patch` version is at least `(major, minor)`; an unreadable one
/// passes (a development build, say), since a missing feature fails visibly later.
fn at_least(version: &str, wanted: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= wanted,
        _ => true,
    }
}

/// A collection's vectors as the server describes them.
#[derive(Debug)]
struct VectorLayout {
    /// The dense vector's size and distance (the unnamed one, or [`DENSE_VECTOR`]).
    dense: Option<(u64, i32)>,
    /// Whether vectors are named.
    named: bool,
    /// Whether there is a [`SPARSE_VECTOR`], and whether it has the IDF modifier.
    bm25: Option<bool>,
}

/// One physical collection.
#[derive(Clone)]
pub struct QdrantStore {
    points: PointsClient<Service>,
    collection: String,
    dim: usize,
    /// Named dense + BM25 vectors (else one unnamed dense vector).
    keywords: bool,
    ordering: WriteOrderingType,
    batch_points: usize,
    max_request_bytes: usize,
    max_in_flight: usize,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore")
            .field("collection", &self.collection)
            .finish()
    }
}

fn ordering(kind: WriteOrderingType) -> WriteOrdering {
    WriteOrdering {
        r#type: kind as i32,
    }
}

fn to_filter(filter: Option<Filter>) -> Option<qdrant_client::qdrant::Filter> {
    let filter = filter?;
    if filter.conditions.is_empty() {
        return None;
    }
    Some(qdrant_client::qdrant::Filter::must(
        filter
            .conditions
            .into_iter()
            .map(|condition| match condition {
                super::Condition::Equals(key, value) => Condition::matches(key, value),
                super::Condition::AnyOf(key, values) => Condition::matches(key, values),
            }),
    ))
}

fn uuid_of(id: Option<QPointId>) -> Result<PointId, StoreError> {
    use qdrant_client::qdrant::point_id::PointIdOptions;
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(text)) => text
            .parse()
            .map_err(|_| StoreError::Rejected(format!("point id {text} is not a UUID"))),
        Some(PointIdOptions::Num(n)) => Err(StoreError::Rejected(format!(
            "point {n} has a numeric id; this collection was not written by freshet"
        ))),
        None => Err(StoreError::Rejected(
            "a point came back without an id".into(),
        )),
    }
}

fn payload_of(payload: HashMap<String, qdrant_client::qdrant::Value>) -> Payload {
    payload
        .into_iter()
        .map(|(k, v)| (k, v.into_json()))
        .collect()
}

/// What a point weighs on the wire, roughly: its vector and its payload's strings.
fn approx_bytes(point: &Point) -> usize {
    fn value_bytes(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::String(s) => s.len() + 8,
            serde_json::Value::Array(items) => items.iter().map(value_bytes).sum::<usize>() + 8,
            serde_json::Value::Object(map) => {
                map.iter().map(|(k, v)| k.len() + value_bytes(v) + 8).sum()
            }
            _ => 12,
        }
    }
    64 + point.vector.len() * 5
        + point
            .payload
            .iter()
            .map(|(k, v)| k.len() + value_bytes(v) + 8)
            .sum::<usize>()
}

/// Splits points into requests of at most `max_points` and (but for a single point that
/// is larger on its own) `max_bytes`.
fn split_points(points: Vec<Point>, max_points: usize, max_bytes: usize) -> Vec<Vec<Point>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for point in points {
        let size = approx_bytes(&point);
        if !batch.is_empty() && (batch.len() >= max_points || bytes + size > max_bytes) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(point);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

impl QdrantStore {
    fn name(&self) -> String {
        format!("Qdrant collection `{}`", self.collection)
    }

    async fn upsert_request(&self, points: Vec<Point>) -> Result<(), StoreError> {
        let keywords = self.keywords;
        let structs: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                let payload = qdrant_client::Payload::from(p.payload);
                if keywords {
                    let sparse = p.sparse.unwrap_or_default();
                    let vectors = NamedVectors::default()
                        .add_vector(DENSE_VECTOR, QVector::new_dense(p.vector))
                        .add_vector(
                            SPARSE_VECTOR,
                            QVector::new_sparse(sparse.indices, sparse.values),
                        );
                    PointStruct::new(p.id, vectors, payload)
                } else {
                    PointStruct::new(p.id, p.vector, payload)
                }
            })
            .collect();
        let request = UpsertPointsBuilder::new(self.collection.clone(), structs)
            .wait(true)
            .ordering(ordering(self.ordering))
            .build();
        rpc("upsert", &self.points, request, |mut c, r| async move {
            c.upsert(r).await
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantStore {
    async fn ensure_collection(&self, dim: usize) -> Result<(), StoreError> {
        StoreError::check_dimension(&self.name(), self.dim, dim)
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        StoreError::check_points(&self.name(), self.dim, &points)?;
        let batches = split_points(points, self.batch_points, self.max_request_bytes);
        futures::stream::iter(batches)
            .map(|batch| self.upsert_request(batch))
            .buffer_unordered(self.max_in_flight)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn delete(&self, ids: Vec<PointId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        for ids in ids.chunks(self.batch_points.max(1000)) {
            let request = DeletePointsBuilder::new(self.collection.clone())
                .points(PointsIdsList {
                    ids: ids.iter().map(|id| QPointId::from(*id)).collect(),
                })
                .wait(true)
                .ordering(ordering(self.ordering))
                .build();
            rpc("delete", &self.points, request, |mut c, r| async move {
                c.delete(r).await
            })
            .await?;
        }
        Ok(())
    }

    async fn search(&self, query: &Query) -> Result<Vec<Hit>, StoreError> {
        if query.mode.uses_keywords() && !self.keywords {
            return Err(StoreError::no_keyword_side(&self.name(), query.mode));
        }
        let dense = || QQuery::new_nearest(VectorInput::new_dense(query.dense.clone()));
        let sparse = || {
            let terms = query.sparse.clone().unwrap_or_default();
            QQuery::new_nearest(VectorInput::new_sparse(terms.indices, terms.values))
        };
        let filter = to_filter(query.filter.clone());
        let mut builder = QueryPointsBuilder::new(self.collection.clone())
            .limit(query.k as u64)
            .with_payload(true);
        builder = match query.mode {
            QueryMode::Dense if self.keywords => builder.query(dense()).using(DENSE_VECTOR),
            QueryMode::Dense => builder.query(dense()),
            QueryMode::Sparse => builder.query(sparse()).using(SPARSE_VECTOR),
            QueryMode::Hybrid => {
                let prefetch = |q: QQuery, using: &str| {
                    let mut p = PrefetchQueryBuilder::default()
                        .query(q)
                        .using(using)
                        .limit(query.prefetch_limit() as u64);
                    if let Some(filter) = filter.clone() {
                        p = p.filter(filter);
                    }
                    p
                };
                builder
                    .add_prefetch(prefetch(dense(), DENSE_VECTOR))
                    .add_prefetch(prefetch(sparse(), SPARSE_VECTOR))
                    .query(QQuery::new_rrf(RrfBuilder::with_k(query.rrf_k as u32)))
            }
        };
        if let Some(filter) = filter {
            builder = builder.filter(filter);
        }
        let request = builder.build();
        let response = rpc("query", &self.points, request, |mut c, r| async move {
            c.query(r).await
        })
        .await?;
        response
            .result
            .into_iter()
            .map(|p| {
                Ok(Hit {
                    id: uuid_of(p.id)?,
                    score: p.score,
                    payload: payload_of(p.payload),
                })
            })
            .collect()
    }

    async fn count(&self, filter: Option<Filter>) -> Result<usize, StoreError> {
        let mut builder = CountPointsBuilder::new(self.collection.clone()).exact(true);
        if let Some(filter) = to_filter(filter) {
            builder = builder.filter(filter);
        }
        let request = builder.build();
        let response = rpc("count", &self.points, request, |mut c, r| async move {
            c.count(r).await
        })
        .await?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    async fn scroll(
        &self,
        offset: Option<PointId>,
        limit: usize,
        filter: Option<Filter>,
        with_vectors: bool,
    ) -> Result<(Vec<StoredPoint>, Option<PointId>), StoreError> {
        let mut builder = ScrollPointsBuilder::new(self.collection.clone())
            .limit(limit.max(1) as u32)
            .with_payload(true)
            .with_vectors(with_vectors);
        if let Some(offset) = offset {
            builder = builder.offset(QPointId::from(offset));
        }
        if let Some(filter) = to_filter(filter) {
            builder = builder.filter(filter);
        }
        let dense_name = if self.keywords { DENSE_VECTOR } else { "" };
        let request = builder.build();
        let response = rpc("scroll", &self.points, request, |mut c, r| async move {
            c.scroll(r).await
        })
        .await?;
        let points = response
            .result
            .into_iter()
            .map(|r| {
                let vector = r
                    .vectors
                    .and_then(|v| v.get_vector_by_name(dense_name))
                    .and_then(|v| match v {
                        VectorOutput::Dense(dense) => Some(dense.data),
                        _ => None,
                    });
                Ok(StoredPoint {
                    id: uuid_of(r.id)?,
                    payload: payload_of(r.payload),
                    vector,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = match response.next_page_offset {
            Some(id) => Some(uuid_of(Some(id))?),
            None => None,
        };
        Ok((points, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Transient;

    fn point(text_len: usize) -> Point {
        let mut payload = Payload::new();
        payload.insert(
            "text".into(),
            serde_json::Value::String("x".repeat(text_len)),
        );
        Point {
            id: uuid::Uuid::new_v4(),
            vector: vec![0.0; 384],
            sparse: None,
            payload,
        }
    }

    #[test]
    fn upserts_are_split_by_count_and_by_bytes() {
        let points: Vec<Point> = (0..10).map(|_| point(100)).collect();
        let sizes: Vec<usize> = split_points(points, 4, usize::MAX)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);

        let one = approx_bytes(&point(10_000));
        let points: Vec<Point> = (0..5).map(|_| point(10_000)).collect();
        let batches = split_points(points, 100, one * 2);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );

        // A point larger than the limit on its own still goes, alone.
        let batches = split_points(vec![point(100), point(50_000), point(100)], 100, 10_000);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn messages_name_the_host_and_never_credentials() {
        assert_eq!(
            host_of("https://user:secret@qdrant.example:6334/path?key=s"),
            "qdrant.example:6334"
        );
        assert_eq!(host_of("http://localhost:6334"), "localhost:6334");
        assert_eq!(host_of("not a url"), "the configured URL");
    }

    #[test]
    fn servers_older_than_collection_metadata_are_refused() {
        assert!(at_least("1.18.3", (1, 16)));
        assert!(at_least("1.16.0", (1, 16)));
        assert!(at_least("2.0.0", (1, 16)));
        assert!(!at_least("1.15.9", (1, 16)));
        assert!(at_least("dev", (1, 16)));
    }

    #[test]
    fn only_overload_and_connection_errors_are_retried() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
        ] {
            assert!(
                status_error(Status::new(code, "x")).is_transient(),
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Internal,
        ] {
            assert!(
                !status_error(Status::new(code, "x")).is_transient(),
                "{code:?}"
            );
        }
    }
}
