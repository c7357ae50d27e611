//! The one TOML configuration file: parsed strictly (unknown fields are errors), filled with
//! defaults, and validated before any work starts.
//!
//! Invariant: a `Config` that passed [`Config::validate`] has absolute paths and settings the
//! pipeline can run with; every field is documented here and mirrored in `config/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default data directory, relative to the config file (or the working directory).
pub const DEFAULT_DATA_DIR: &str = ".freshet";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the ledger (SQLite) and the embedded vector store live. Relative paths are
    /// resolved against the config file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The places documents come from.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub chunking: ChunkingConfig,
    #[serde(default)]
    pub embedding: EmbeddingConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub watch: WatchConfig,
    /// Where the vectors go: the embedded engine (default), a Qdrant server, or
    /// PostgreSQL with pgvector.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where the change-tracking ledger lives: SQLite in the data directory (default),
    /// or PostgreSQL shared by several workers.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// How queries find chunks: dense vectors, BM25 term weights beside them, fusion and
    /// reranking.
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    /// How documents without a text layer of their own are read: OCR of images and
    /// scanned PDF pages.
    #[serde(default)]
    pub extract: ExtractConfig,
}

/// Extraction beyond what a document's own bytes carry as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// "off" (default): images are skipped and image-only PDF pages named as missing.
    /// "tesseract": they are read by Debian's tesseract (`scripts/provision --ocr`), and
    /// their chunks carry `ocr = true`. Turning it on or off re-reads PDFs, images and
    /// emails, not the rest of the corpus.
    #[serde(default)]
    pub ocr: OcrKind,
    /// tesseract's languages, `+`-joined (`eng`, `eng+deu`); each needs Debian's
    /// `tesseract-ocr-<lang>`.
    #[serde(default = "default_ocr_languages")]
    pub ocr_languages: String,
    /// The resolution scanned PDF pages are rendered at for OCR (very large pages are
    /// rendered lower, to stay within 60 million pixels).
    #[serde(default = "default_ocr_dpi")]
    pub ocr_dpi: u32,
    /// Seconds one page or image may take to render or read before it is given up on.
    #[serde(default = "default_ocr_timeout_s")]
    pub ocr_timeout_s: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OcrKind {
    #[default]
    Off,
    Tesseract,
}

fn default_ocr_languages() -> String {
    "eng".into()
}

const fn default_ocr_dpi() -> u32 {
    300
}

const fn default_ocr_timeout_s() -> u64 {
    120
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            ocr: OcrKind::Off,
            ocr_languages: default_ocr_languages(),
            ocr_dpi: default_ocr_dpi(),
            ocr_timeout_s: default_ocr_timeout_s(),
        }
    }
}

/// Retrieval: what the index holds beside the dense vectors, and how queries rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalConfig {
    /// Keep a keyword (BM25) representation of every chunk beside its dense vector:
    /// a sparse vector with the IDF modifier in Qdrant and the embedded engine, a
    /// full-text `tsvector` column in PostgreSQL. Changing it builds a new collection.
    #[serde(default = "default_true")]
    pub sparse: bool,
    /// The `k` of reciprocal rank fusion: larger flattens the reward for top ranks. 2 is
    /// Qdrant's own default, and scored best on the coreutils judged set (see README).
    #[serde(default = "default_rrf_k")]
    pub rrf_k: usize,
    /// Candidates each side (dense, sparse) contributes to a hybrid query before fusion;
    /// never fewer than the results asked for.
    #[serde(default = "default_candidates")]
    pub candidates: usize,
    /// A cross-encoder ONNX model directory (model.onnx + tokenizer.json): when set,
    /// queries rerank their top `rerank_top_n` fused results with it.
    #[serde(default)]
    pub rerank_model_dir: Option<PathBuf>,
    /// How many fused results the reranker scores.
    #[serde(default = "default_rerank_top_n")]
    pub rerank_top_n: usize,
}

const fn default_true() -> bool {
    true
}

const fn default_rrf_k() -> usize {
    2
}

const fn default_candidates() -> usize {
    100
}

const fn default_rerank_top_n() -> usize {
    50
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            sparse: true,
            rrf_k: default_rrf_k(),
            candidates: default_candidates(),
            rerank_model_dir: None,
            rerank_top_n: default_rerank_top_n(),
        }
    }
}

/// The ledger. Without `url_env` it is a SQLite file in the data directory and one
/// process at a time writes through it. With `url_env` it is a PostgreSQL schema shared
/// by workers on any number of hosts: each source (or each partition of one) is a work
/// unit that one worker at a time holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Name of the environment variable holding the PostgreSQL URL of a shared ledger
    /// (e.g. `"FRESHET_LEDGER_URL"`). The URL is a secret: never written in the config,
    /// logged or reported.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The ledger's schema (created if missing). It may share a database with pgvector's
    /// tables.
    #[serde(default = "default_ledger_schema")]
    pub schema: String,
    /// Seconds after which a unit held by a worker that died or stalled (kill -9, a lost
    /// network, a paused process) is taken over by another worker.
    #[serde(default = "default_lease_takeover_s")]
    pub lease_takeover_s: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            url_env: None,
            schema: default_ledger_schema(),
            lease_takeover_s: default_lease_takeover_s(),
        }
    }
}

fn default_ledger_schema() -> String {
    "freshet".into()
}

const fn default_lease_takeover_s() -> u64 {
    10
}

/// The vector store. Every kind keeps the same guarantees: the ledger never vouches for
/// a point the store lacks, applications query a stable name (an alias or a view) that
/// moves to a new model's collection only once it is complete, and freshet never writes
/// to or drops a collection it did not create.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// Qdrant's engine in-process, under the data directory (one process at a time).
    #[default]
    Embedded,
    /// A Qdrant server or cluster over gRPC.
    Qdrant(QdrantConfig),
    /// PostgreSQL with the pgvector extension.
    Pgvector(PgvectorConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QdrantConfig {
    /// The gRPC endpoint, e.g. `http://127.0.0.1:6334`; `https://` means TLS.
    pub url: String,
    /// The environment variable holding the API key (the config never holds the key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A PEM file of the certificate authority that signed the server's certificate, when
    /// it is not in the system's trust store.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Seconds one request may take (and the connect timeout).
    #[serde(default = "default_store_timeout_s")]
    pub timeout_s: u64,
    /// The name applications query: an alias that freshet points at the current model's
    /// collection (`<collection>__<model>-<dim>`).
    pub collection: String,
    /// For new collections: shards, copies of each shard, and how many copies must
    /// acknowledge a write.
    #[serde(default = "one")]
    pub shard_number: u32,
    #[serde(default = "one")]
    pub replication_factor: u32,
    #[serde(default = "one")]
    pub write_consistency_factor: u32,
    /// For new collections: keep vectors and payloads on disk instead of in memory.
    #[serde(default)]
    pub on_disk: bool,
    /// Write ordering (`weak`, `medium` or `strong`); every write also waits until it is
    /// applied (`wait = true`) before the ledger commits.
    #[serde(default)]
    pub write_ordering: WriteOrderingConfig,
    /// Points per upsert request (requests are also kept under `max_request_bytes`).
    #[serde(default = "default_qdrant_batch_points")]
    pub batch_points: usize,
    /// Largest upsert request in bytes, under the server's gRPC message limit (32 MiB by
    /// default).
    #[serde(default = "default_qdrant_request_bytes")]
    pub max_request_bytes: usize,
    /// Upsert requests in flight at once.
    #[serde(default = "default_qdrant_in_flight")]
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOrderingConfig {
    /// Qdrant's default: fastest, a write may be reordered with others on replicas.
    #[default]
    Weak,
    /// Writes go through a dynamically elected leader.
    Medium,
    /// Writes go through the permanent leader: a total order, even across failures.
    Strong,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgvectorConfig {
    /// The environment variable holding the connection URL
    /// (`postgres://user:password@host:port/db`); the config never holds it.
    #[serde(default = "default_pgvector_url_env")]
    pub url_env: String,
    /// The schema of the view and of freshet's tables (created when missing).
    #[serde(default = "default_pgvector_schema")]
    pub schema: String,
    /// The name applications query: a view over the current model's table
    /// (`<table>__<hash>`).
    pub table: String,
    /// HNSW candidate list size for queries (`hnsw.ef_search`); raised to k when k is
    /// larger. Filtered queries that the index answers short fall back to an exact scan.
    #[serde(default = "default_pgvector_ef_search")]
    pub ef_search: u32,
    /// Seconds to wait for a connection.
    #[serde(default = "default_store_timeout_s")]
    pub timeout_s: u64,
    /// Rows per upsert statement.
    #[serde(default = "default_pgvector_batch_rows")]
    pub batch_rows: usize,
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        match self {
            StoreConfig::Embedded => Ok(()),
            StoreConfig::Qdrant(q) => {
                if !(q.url.starts_with("http://") || q.url.starts_with("https://")) {
                    // The URL itself is not repeated: it may carry credentials.
                    return invalid(
                        "store.url must start with http:// or https:// (Qdrant's gRPC port, 6334 by default)".into(),
                    );
                }
                if !valid_store_name(&q.collection) {
                    return invalid(format!(
                        "store.collection = {:?} must be 1 to 100 letters, digits, `_` or `-`",
                        q.collection
                    ));
                }
                if q.batch_points == 0 || q.max_in_flight == 0 || q.max_request_bytes < 1024 {
                    return invalid("store.batch_points and store.max_in_flight must be at least 1, store.max_request_bytes at least 1024".into());
                }
                if q.shard_number == 0
                    || q.replication_factor == 0
                    || q.write_consistency_factor == 0
                {
                    return invalid("store.shard_number, store.replication_factor and store.write_consistency_factor must be at least 1".into());
                }
                if q.timeout_s == 0 {
                    return invalid("store.timeout_s must be at least 1".into());
                }
                Ok(())
            }
            StoreConfig::Pgvector(p) => {
                // Lower case only: the names are used unquoted by applications too.
                let lower = |name: &str| {
                    valid_store_name(name)
                        && name.len() <= 40
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                        && !name.contains('-')
                        && name == name.to_ascii_lowercase()
                };
                if !lower(&p.table) || !lower(&p.schema) {
                    return invalid(format!(
                        "store.schema = {:?} and store.table = {:?} must be lower-case SQL names: letters, digits and `_`, at most 40 characters, not starting with a digit",
                        p.schema, p.table
                    ));
                }
                if p.url_env.trim().is_empty() {
                    return invalid("store.url_env must name an environment variable".into());
                }
                if p.batch_rows == 0 || p.timeout_s == 0 || p.ef_search == 0 {
                    return invalid(
                        "store.batch_rows, store.timeout_s and store.ef_search must be at least 1"
                            .into(),
                    );
                }
                Ok(())
            }
        }
    }
}

fn valid_store_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const fn default_store_timeout_s() -> u64 {
    30
}
const fn one() -> u32 {
    1
}
const fn default_qdrant_batch_points() -> usize {
    256
}
const fn default_qdrant_request_bytes() -> usize {
    8 << 20
}
const fn default_qdrant_in_flight() -> usize {
    4
}
fn default_pgvector_url_env() -> String {
    "FRESHET_PGVECTOR_URL".into()
}
fn default_pgvector_schema() -> String {
    "public".into()
}
const fn default_pgvector_ef_search() -> u32 {
    100
}
const fn default_pgvector_batch_rows() -> usize {
    500
}

/// How `freshet watch` follows changes, and where long-running modes (`watch`, `sync
/// --every`) serve metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Milliseconds a changed path must stay quiet before it is indexed: a burst of writes
    /// or an editor's write-then-rename becomes one change. Lower means fresher, higher
    /// means fewer re-embeddings of files being edited.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Seconds between full rescans while watching, a safety net for file systems whose
    /// change events are unreliable (network mounts); 0 turns it off.
    #[serde(default = "default_rescan_interval_s")]
    pub rescan_interval_s: u64,
    /// Address of the local query endpoint a watcher serves so that `freshet query`
    /// works while it runs (the embedded store admits one process). Loopback only; port 0
    /// picks a free port, recorded in the data directory.
    #[serde(default = "default_query_addr")]
    pub query_addr: String,
    /// Address for Prometheus metrics (`/metrics`) and health checks (`/healthz`,
    /// `/readyz`); unset serves none. `--metrics-addr` overrides it.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// A config holds a handful of sources: their size does not matter, plain fields read better.
#[allow(clippy::large_enum_variant)]
pub enum SourceConfig {
    /// A directory tree of documents (Markdown, text, source code, HTML, PDF).
    Folder(FolderConfig),
    /// Rows of a table or a query (PostgreSQL, MySQL/MariaDB, SQLite), one document each.
    Sql(SqlConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Stable name of this source; part of every point id and payload.
    pub id: String,
    /// Name of the environment variable holding the connection URL (`postgres://...`,
    /// `mysql://...`, `sqlite://...`). The URL is a secret: it is never written in the
    /// config, logged or reported.
    pub url_env: String,
    /// A table (optionally `schema.table`) to index; or use `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// A SELECT whose rows are indexed (joins welcome); or use `table`.
    #[serde(default)]
    pub query: Option<String>,
    /// Columns whose values identify a row (the document key).
    pub key: Vec<String>,
    /// What gets embedded, with `{column}` placeholders, e.g. `"{title}\n\n{body}"`.
    pub text: String,
    /// Columns copied into every point's payload for filtering (e.g. a tenant or group
    /// id for access control). Names must not clash with freshet's own payload fields.
    #[serde(default)]
    pub metadata: Vec<String>,
    /// A timestamp column bumped on every change (e.g. `updated_at`): each scan then reads
    /// in full only the rows changed since the last completed scan (and lists the keys of
    /// the others, to find deletions). Unset: every scan reads every row and compares
    /// content hashes.
    #[serde(default)]
    pub cursor_column: Option<String>,
    /// Seconds before the cursor each scan starts again, so a row committed late with an
    /// older timestamp (a long transaction) is not missed.
    #[serde(default = "default_cursor_overlap_s")]
    pub cursor_overlap_s: u64,
    /// A column marking deleted rows (e.g. `deleted_at` or `is_deleted`): a row is live
    /// while it is NULL, empty, 0 or false; marked rows are removed like deleted ones.
    #[serde(default)]
    pub soft_delete_column: Option<String>,
    /// Seconds between scans while watching.
    #[serde(default = "default_poll_interval_s")]
    pub poll_interval_s: u64,
    /// PostgreSQL only: a LISTEN/NOTIFY channel whose notifications wake the watcher
    /// before its next poll (send them from a trigger; see the README). Only a wake-up:
    /// scans still go by the cursor, so a dropped notification loses nothing.
    #[serde(default)]
    pub notify_channel: Option<String>,
    /// Data-quality checks run on every scan before anything is written.
    #[serde(default)]
    pub checks: SqlChecksConfig,
    /// Split the source into this many work units by a stable hash of the row key, so
    /// that several workers sharing a PostgreSQL ledger index it together. Each unit's
    /// scan reads only its rows (the hash is computed in SQL on PostgreSQL and MySQL).
    /// Changing it re-indexes nothing.
    #[serde(default = "one")]
    pub partitions: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlChecksConfig {
    /// `fail`: a scan with any violation writes and deletes nothing and the run fails.
    /// `quarantine`: bad rows are recorded (status `quarantined`, with the reason) and not
    /// indexed; the rest is. Schema drift always fails.
    #[serde(default)]
    pub on_violation: OnViolationConfig,
    /// Columns that must exist, with their kind of type: `integer`, `number`, `text`,
    /// `timestamp`, `boolean` or `any` (e.g. `{ id = "integer", body = "text" }`).
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, String>,
    /// Columns that must not be NULL (key columns never may).
    #[serde(default)]
    pub not_null: Vec<String>,
    /// Key values must be unique.
    #[serde(default = "yes")]
    pub unique_key: bool,
    /// Allowed values of named columns (e.g. `{ status = ["open", "closed"] }`).
    #[serde(default)]
    pub allowed: std::collections::BTreeMap<String, Vec<String>>,
    /// Numeric ranges `[min, max]` of named columns (e.g. `{ price = [0, 10000] }`).
    #[serde(default)]
    pub ranges: std::collections::BTreeMap<String, [f64; 2]>,
    /// Largest share (0.0 to 1.0) of rows whose rendered text is empty.
    #[serde(default)]
    pub max_empty_text_share: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnViolationConfig {
    #[default]
    Fail,
    Quarantine,
}

impl Default for SqlChecksConfig {
    fn default() -> Self {
        Self {
            on_violation: OnViolationConfig::Fail,
            columns: Default::default(),
            not_null: Vec::new(),
            unique_key: true,
            allowed: Default::default(),
            ranges: Default::default(),
            max_empty_text_share: None,
        }
    }
}

/// Payload fields freshet writes itself; metadata columns may not take these names.
pub const RESERVED_PAYLOAD_FIELDS: &[&str] = &[
    "source_id",
    "doc_key",
    "chunk_index",
    "text",
    "byte_start",
    "byte_end",
    "page",
    "page_end",
    "heading_path",
    "title",
    "media_type",
    "content_hash",
    "chunk_hash",
    "fingerprint",
    "decode_warning",
    "indexed_at",
    "table",
    "row_key",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// Stable name of this source; it is part of every point id and payload. Changing it
    /// re-indexes the source under the new name.
    pub id: String,
    /// The root directory. Relative paths are resolved against the config file's directory.
    pub path: PathBuf,
    /// Globs over paths relative to the root (e.g. `"**/*.md"`); empty means every file.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs over paths relative to the root that are never indexed (e.g. `"drafts/**"`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Honour `.gitignore`, `.ignore` and `.git/info/exclude` files, also outside a git
    /// repository.
    #[serde(default = "yes")]
    pub respect_gitignore: bool,
    /// Also index hidden files and directories (names starting with `.`).
    #[serde(default)]
    pub include_hidden: bool,
    /// Split the source into this many work units by a stable hash of the path, for
    /// several workers on hosts that all mount the folder. Changing it re-indexes nothing.
    #[serde(default = "one")]
    pub partitions: u32,
}

impl SourceConfig {
    pub fn id(&self) -> &str {
        match self {
            SourceConfig::Folder(folder) => &folder.id,
            SourceConfig::Sql(sql) => &sql.id,
        }
    }

    /// How many work units the source is split into.
    pub fn partitions(&self) -> u32 {
        match self {
            SourceConfig::Folder(folder) => folder.partitions,
            SourceConfig::Sql(sql) => sql.partitions,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Maximum chunk size in tokens of the embedding model's own tokenizer.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Tokens shared by neighbouring chunks, so a sentence cut at a boundary is still
    /// retrievable from one of them. Must be less than half of `max_tokens`.
    #[serde(default = "default_overlap_tokens")]
    pub overlap_tokens: usize,
    /// What is embedded before each chunk's text: its heading path (or the document's
    /// title), or nothing. The payload's `text` is the chunk alone either way.
    #[serde(default)]
    pub context: ChunkContext,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkContext {
    /// "Guide > Install" (or the title) on a line before the text.
    #[default]
    Heading,
    /// The text alone.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Directory holding `model.onnx` and the tokenizer files (`tokenizer.json`,
    /// `config.json`, `special_tokens_map.json`, `tokenizer_config.json`). Unset: the
    /// `FRESHET_MODEL_DIR` environment variable, then the default model provisioned by
    /// `scripts/provision` into the per-user cache.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Name recorded with every vector; a different name means a different index. Unset:
    /// the model directory's name.
    #[serde(default)]
    pub model_id: Option<String>,
    /// Path to `libonnxruntime.so` (1.24 or newer). Unset: `ORT_DYLIB_PATH`, then the
    /// runtime provisioned into the per-user cache.
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// How token vectors become one text vector: `mean` (sentence-transformers models such
    /// as all-MiniLM) or `cls` (BGE-style models).
    #[serde(default)]
    pub pooling: PoolingConfig,
    /// Most texts per ONNX Runtime call. Texts are sorted by length and grouped so that a
    /// call pads little; raise this (and `batch_tokens`) on a GPU.
    #[serde(default = "default_embed_batch")]
    pub batch_size: usize,
    /// Most padded tokens per ONNX Runtime call (a longer text goes alone). On CPU small
    /// calls win: padding and attention over it cost more than the calls.
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    /// Inference threads; 0 uses every core.
    #[serde(default)]
    pub threads: usize,
    /// Model sessions working in parallel, the threads split among them; 0 decides: one
    /// single-threaded session per thread on the CPU (while the copies of the weights stay
    /// under 1 GiB), one session on a GPU.
    #[serde(default)]
    pub sessions: usize,
    /// Longest input the model sees, in tokens; longer texts are truncated.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// What computes the vectors: `local` (the model above, through ONNX Runtime) or
    /// `openai` (any OpenAI-compatible `/v1/embeddings` service, set up below).
    #[serde(default)]
    pub provider: ProviderKind,
    /// Where the local model runs: `cpu`, `cuda` (device 0) or `cuda:N`. Not part of the
    /// index fingerprint: the same model gives the same vectors on either.
    #[serde(default = "default_device")]
    pub device: String,
    /// What to do when `device` cannot be used: unset fails with the reason; `cpu` logs
    /// it and runs on the CPU.
    #[serde(default)]
    pub fallback: Option<DeviceFallback>,
    /// `openai` provider: the service's base URL (`…/v1`) or its full `…/embeddings` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `openai` provider: the model name sent with every request.
    #[serde(default)]
    pub model: Option<String>,
    /// `openai` provider: the environment variable holding the API key (sent as a
    /// bearer token). Unset: no key is sent.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `openai` provider: asks for vectors of this length (models that support it, such
    /// as text-embedding-3-*). Unset: the model's own.
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// `openai` provider: requests in flight at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// `openai` provider: most texts per request.
    #[serde(default = "default_max_batch_texts")]
    pub max_batch_texts: usize,
    /// `openai` provider: most tokens per request (counted by `tokenizer`).
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
    /// `openai` provider: seconds one request may take before it is retried.
    #[serde(default = "default_embed_timeout_s")]
    pub timeout_s: f64,
    /// `openai` provider: retries of a request on 429, 5xx, timeouts and lost
    /// connections before the run fails.
    #[serde(default = "default_embed_retries")]
    pub max_retries: u32,
    /// `openai` provider: what sizes chunks and batches: `cl100k_base` or `o200k_base`
    /// (OpenAI's encodings), or the path of the model's `tokenizer.json`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// `openai` provider: the model's input window in tokens. A chunk longer than this is
    /// never sent (the service would truncate it or refuse it); it fails its document.
    #[serde(default)]
    pub max_input_tokens: Option<usize>,
}

/// Which embedder computes vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    #[default]
    Local,
    Openai,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceFallback {
    Cpu,
}

/// A parsed `embedding.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl EmbeddingConfig {
    /// The tokenizer an embedding service's texts are sized with: `tokenizer` when set,
    /// else `cl100k_base` for OpenAI's own `text-embedding-*` models.
    pub fn service_tokenizer(&self) -> std::result::Result<String, String> {
        if let Some(tokenizer) = &self.tokenizer {
            return Ok(tokenizer.clone());
        }
        match self.model.as_deref() {
            Some(model) if model.starts_with("text-embedding-") => Ok("cl100k_base".into()),
            _ => Err("embedding.provider = \"openai\" needs embedding.tokenizer: \"cl100k_base\", \"o200k_base\" or the path of the model's tokenizer.json, so chunks are sized in the model's own tokens".into()),
        }
    }

    /// The service model's input window: `max_input_tokens`, else 8191 for OpenAI's
    /// encodings (their embedding models' window).
    pub fn input_window(&self) -> std::result::Result<usize, String> {
        if let Some(window) = self.max_input_tokens {
            return if window == 0 {
                Err("embedding.max_input_tokens must be at least 1".into())
            } else {
                Ok(window)
            };
        }
        match self.service_tokenizer()?.as_str() {
            "cl100k_base" | "o200k_base" => Ok(8191),
            _ => Err("embedding.max_input_tokens is needed with a tokenizer.json: the model's input window in tokens (e.g. 512 for BERT-style models)".into()),
        }
    }

    pub fn parsed_device(&self) -> std::result::Result<Device, String> {
        match self.device.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0)
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!(
                        "embedding.device = {other:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""
                    )
                }),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingConfig {
    #[default]
    Mean,
    Cls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Changes a source may queue before it waits for the pipeline (backpressure).
    #[serde(default = "default_channel_depth")]
    pub channel_depth: usize,
    /// Chunks per store-and-commit batch; a crash redoes at most one batch.
    #[serde(default = "default_commit_batch_chunks")]
    pub commit_batch_chunks: usize,
    /// Documents larger than this are recorded as failed without being read.
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: u64,
    /// Documents read and parsed at once (on the blocking pool); 0 means one per core.
    #[serde(default)]
    pub parallel_documents: usize,
    /// Largest share of a source's documents one sync may delete (0.0 to 1.0); a sync
    /// that would delete more refuses unless run with `--allow-mass-delete`.
    #[serde(default = "default_max_delete_share")]
    pub max_delete_share: f64,
}

const fn default_cursor_overlap_s() -> u64 {
    300
}
const fn default_poll_interval_s() -> u64 {
    30
}
const fn default_debounce_ms() -> u64 {
    200
}
const fn default_rescan_interval_s() -> u64 {
    3600
}
fn default_query_addr() -> String {
    "127.0.0.1:0".into()
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            debounce_ms: default_debounce_ms(),
            rescan_interval_s: default_rescan_interval_s(),
            query_addr: default_query_addr(),
            metrics_addr: None,
        }
    }
}

impl WatchConfig {
    /// What a following folder source needs.
    pub fn settings(&self) -> freshet_connectors::WatchSettings {
        freshet_connectors::WatchSettings {
            debounce: std::time::Duration::from_millis(self.debounce_ms),
            rescan_interval: (self.rescan_interval_s > 0)
                .then(|| std::time::Duration::from_secs(self.rescan_interval_s)),
        }
    }
}

const fn yes() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
const fn default_max_tokens() -> usize {
    256
}
const fn default_overlap_tokens() -> usize {
    32
}
const fn default_embed_batch() -> usize {
    32
}
const fn default_batch_tokens() -> usize {
    512
}
const fn default_max_length() -> usize {
    512
}
fn default_device() -> String {
    "cpu".into()
}
const fn default_max_concurrency() -> usize {
    4
}
const fn default_max_batch_texts() -> usize {
    64
}
const fn default_max_batch_tokens() -> usize {
    16_384
}
const fn default_embed_timeout_s() -> f64 {
    60.0
}
const fn default_embed_retries() -> u32 {
    6
}
const fn default_channel_depth() -> usize {
    1024
}
const fn default_commit_batch_chunks() -> usize {
    256
}
const fn default_max_delete_share() -> f64 {
    0.5
}
const fn default_max_document_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            max_tokens: default_max_tokens(),
            overlap_tokens: default_overlap_tokens(),
            context: ChunkContext::default(),
        }
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            model_id: None,
            onnxruntime_library: None,
            pooling: PoolingConfig::default(),
            batch_size: default_embed_batch(),
            batch_tokens: default_batch_tokens(),
            threads: 0,
            sessions: 0,
            max_length: default_max_length(),
            provider: ProviderKind::default(),
            device: default_device(),
            fallback: None,
            url: None,
            model: None,
            api_key_env: None,
            dimensions: None,
            max_concurrency: default_max_concurrency(),
            max_batch_texts: default_max_batch_texts(),
            max_batch_tokens: default_max_batch_tokens(),
            timeout_s: default_embed_timeout_s(),
            max_retries: default_embed_retries(),
            tokenizer: None,
            max_input_tokens: None,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            channel_depth: default_channel_depth(),
            commit_batch_chunks: default_commit_batch_chunks(),
            max_document_bytes: default_max_document_bytes(),
            parallel_documents: 0,
            max_delete_share: default_max_delete_share(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            sources: Vec::new(),
            chunking: ChunkingConfig::default(),
            embedding: EmbeddingConfig::default(),
            pipeline: PipelineConfig::default(),
            watch: WatchConfig::default(),
            store: StoreConfig::default(),
            ledger: LedgerConfig::default(),
            retrieval: RetrievalConfig::default(),
            extract: ExtractConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and validates a config file; relative paths are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML without resolving paths or validating.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: err.to_string(),
        })
    }

    /// The config `freshet sync PATH` uses without a config file: one folder source named
    /// after the folder's absolute path.
    pub fn for_folder(folder: &Path) -> Self {
        let absolute = absolute(folder);
        Config {
            sources: vec![SourceConfig::Folder(FolderConfig {
                id: format!("folder:{}", absolute.display()),
                path: absolute,
                include: Vec::new(),
                exclude: Vec::new(),
                respect_gitignore: true,
                include_hidden: false,
                partitions: 1,
            })],
            ..Config::default()
        }
    }

    /// Makes every path absolute, relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &Path| absolute(&base.join(p));
        self.data_dir = resolve(&self.data_dir);
        for source in &mut self.sources {
            match source {
                SourceConfig::Folder(folder) => folder.path = resolve(&folder.path),
                SourceConfig::Sql(_) => {}
            }
        }
        if let Some(dir) = &self.embedding.model_dir {
            self.embedding.model_dir = Some(resolve(dir));
        }
        if let Some(lib) = &self.embedding.onnxruntime_library {
            self.embedding.onnxruntime_library = Some(resolve(lib));
        }
        if let Some(dir) = &self.retrieval.rerank_model_dir {
            self.retrieval.rerank_model_dir = Some(resolve(dir));
        }
        if let Some(tokenizer) = &self.embedding.tokenizer {
            if tokenizer.ends_with(".json") {
                self.embedding.tokenizer =
                    Some(resolve(Path::new(tokenizer)).display().to_string());
            }
        }
        if let StoreConfig::Qdrant(QdrantConfig {
            ca_cert: Some(cert),
            ..
        }) = &mut self.store
        {
            *cert = resolve(cert);
        }
    }

    /// The embedder's settings: a known device, and for a service everything it needs.
    fn validate_embedding(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let embedding = &self.embedding;
        let device = embedding.parsed_device().map_err(ConfigError::Invalid)?;
        if embedding.batch_size == 0 || embedding.batch_tokens == 0 {
            return invalid(
                "embedding.batch_size and embedding.batch_tokens must be at least 1".into(),
            );
        }
        if embedding.provider == ProviderKind::Local {
            return Ok(());
        }
        if device != Device::Cpu {
            return invalid(format!(
                "embedding.device = {:?} applies to the local model; an embedding service chooses its own device",
                embedding.device
            ));
        }
        let Some(url) = embedding.url.as_deref() else {
            return invalid("embedding.provider = \"openai\" needs embedding.url (the service's `…/v1` base URL)".into());
        };
        match url::Url::parse(url) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
            _ => {
                return invalid(format!(
                    "embedding.url = {url:?} is not an http:// or https:// URL"
                ))
            }
        }
        if embedding
            .model
            .as_deref()
            .is_none_or(|m| m.trim().is_empty())
        {
            return invalid("embedding.provider = \"openai\" needs embedding.model (the name the service knows the model by)".into());
        }
        if embedding.max_concurrency == 0
            || embedding.max_batch_texts == 0
            || embedding.max_batch_tokens == 0
        {
            return invalid("embedding.max_concurrency, max_batch_texts and max_batch_tokens must be at least 1".into());
        }
        if !(embedding.timeout_s > 0.0 && embedding.timeout_s.is_finite()) {
            return invalid(format!(
                "embedding.timeout_s = {} must be a positive number of seconds",
                embedding.timeout_s
            ));
        }
        if embedding.dimensions == Some(0) {
            return invalid("embedding.dimensions must be at least 1 when set".into());
        }
        let window = embedding.input_window().map_err(ConfigError::Invalid)?;
        if self.chunking.max_tokens > window {
            return invalid(format!(
                "chunking.max_tokens = {} is more than the model's window (embedding.max_input_tokens = {window}); lower max_tokens",
                self.chunking.max_tokens
            ));
        }
        if self.chunking.max_tokens > embedding.max_batch_tokens {
            return invalid(format!(
                "chunking.max_tokens = {} is more than embedding.max_batch_tokens = {}: a chunk must fit a request",
                self.chunking.max_tokens, embedding.max_batch_tokens
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let mut ids = std::collections::HashSet::new();
        for source in &self.sources {
            let id = source.id();
            if id.trim().is_empty() {
                return invalid("a source has an empty `id`".into());
            }
            if id.chars().any(char::is_control) {
                return invalid(format!("source id {id:?} contains control characters"));
            }
            if !ids.insert(id) {
                return invalid(format!(
                    "two sources share the id `{id}`; ids must be unique"
                ));
            }
            if !(1..=1024).contains(&source.partitions()) {
                return invalid(format!(
                    "source `{id}`: partitions = {} must be between 1 and 1024",
                    source.partitions()
                ));
            }
            if let SourceConfig::Sql(sql) = source {
                if sql.table.is_some() == sql.query.is_some() {
                    return invalid(format!(
                        "source `{id}`: give exactly one of `table` and `query`"
                    ));
                }
                if sql.key.is_empty() {
                    return invalid(format!("source `{id}`: `key` names no column"));
                }
                if sql.url_env.trim().is_empty() {
                    return invalid(format!(
                        "source `{id}`: `url_env` must name the environment variable that holds the connection URL"
                    ));
                }
                if let Some(name) = sql
                    .metadata
                    .iter()
                    .find(|m| RESERVED_PAYLOAD_FIELDS.contains(&m.as_str()))
                {
                    return invalid(format!(
                        "source `{id}`: metadata column `{name}` clashes with a payload field of freshet's own; alias it in a `query` (e.g. SELECT {name} AS row_{name})"
                    ));
                }
                for (column, [min, max]) in &sql.checks.ranges {
                    if min > max {
                        return invalid(format!(
                            "source `{id}`: checks.ranges.{column} = [{min}, {max}] is empty"
                        ));
                    }
                }
                if let Some(share) = sql.checks.max_empty_text_share {
                    if !(0.0..=1.0).contains(&share) {
                        return invalid(format!(
                            "source `{id}`: checks.max_empty_text_share = {share} must be between 0.0 and 1.0"
                        ));
                    }
                }
                if sql.poll_interval_s == 0 {
                    return invalid(format!("source `{id}`: poll_interval_s must be at least 1"));
                }
            }
        }
        if let Some(url_env) = &self.ledger.url_env {
            if url_env.trim().is_empty() {
                return invalid(
                    "ledger.url_env must name the environment variable that holds the PostgreSQL URL".into(),
                );
            }
            if matches!(self.store, StoreConfig::Embedded) {
                return invalid(
                    "a shared ledger (ledger.url_env) needs a store that workers share: set [store] kind = \"qdrant\" or \"pgvector\" (the embedded store lives in one data directory)".into(),
                );
            }
        }
        if self.ledger.lease_takeover_s < 2 {
            return invalid(format!(
                "ledger.lease_takeover_s = {} must be at least 2",
                self.ledger.lease_takeover_s
            ));
        }
        if self.ledger.schema.is_empty()
            || !self
                .ledger
                .schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(format!(
                "ledger.schema = {:?} must be letters, digits and `_`",
                self.ledger.schema
            ));
        }
        let chunking = &self.chunking;
        if !(16..=8192).contains(&chunking.max_tokens) {
            return invalid(format!(
                "chunking.max_tokens = {} is outside 16..=8192",
                chunking.max_tokens
            ));
        }
        if chunking.overlap_tokens * 2 > chunking.max_tokens {
            return invalid(format!(
                "chunking.overlap_tokens = {} must be at most half of max_tokens ({})",
                chunking.overlap_tokens, chunking.max_tokens
            ));
        }
        self.validate_embedding()?;
        let retrieval = &self.retrieval;
        if retrieval.rrf_k == 0 || retrieval.candidates == 0 || retrieval.rerank_top_n == 0 {
            return invalid(
                "retrieval.rrf_k, retrieval.candidates and retrieval.rerank_top_n must be at least 1"
                    .into(),
            );
        }
        let extract = &self.extract;
        let language =
            |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !extract.ocr_languages.split('+').all(language) {
            return invalid(format!(
                "extract.ocr_languages = {:?} must be tesseract language codes joined by `+` (\"eng\", \"eng+deu\")",
                extract.ocr_languages
            ));
        }
        if !(50..=1200).contains(&extract.ocr_dpi) || extract.ocr_timeout_s == 0 {
            return invalid(
                "extract.ocr_dpi must be 50 to 1200 and extract.ocr_timeout_s at least 1".into(),
            );
        }
        // Two tokens for [CLS] and [SEP]: a chunk must reach the model whole.
        if self.embedding.provider == ProviderKind::Local
            && chunking.max_tokens + 2 > self.embedding.max_length
        {
            return invalid(format!(
                "chunking.max_tokens = {} does not fit the model input (embedding.max_length = {}, minus 2 special tokens); lower max_tokens",
                chunking.max_tokens, self.embedding.max_length
            ));
        }
        let pipeline = &self.pipeline;
        if pipeline.channel_depth == 0 || pipeline.commit_batch_chunks == 0 {
            return invalid(
                "pipeline.channel_depth and pipeline.commit_batch_chunks must be at least 1".into(),
            );
        }
        if !(0.0..=1.0).contains(&pipeline.max_delete_share) {
            return invalid(format!(
                "pipeline.max_delete_share = {} must be between 0.0 and 1.0",
                pipeline.max_delete_share
            ));
        }
        if pipeline.max_document_bytes == 0 {
            return invalid("pipeline.max_document_bytes must be at least 1".into());
        }
        let watch = &self.watch;
        if !(10..=60_000).contains(&watch.debounce_ms) {
            return invalid(format!(
                "watch.debounce_ms = {} is outside 10..=60000",
                watch.debounce_ms
            ));
        }
        match watch.query_addr.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => {}
            Ok(_) => {
                return invalid(format!(
                    "watch.query_addr = {:?} must be a loopback address (the query endpoint serves your documents' text)",
                    watch.query_addr
                ))
            }
            Err(err) => {
                return invalid(format!(
                    "watch.query_addr = {:?} is not an address: {err}",
                    watch.query_addr
                ))
            }
        }
        if let Some(addr) = &watch.metrics_addr {
            if let Err(err) = addr.parse::<std::net::SocketAddr>() {
                return invalid(format!(
                    "watch.metrics_addr = {addr:?} is not an address (e.g. \"0.0.0.0:9464\"): {err}"
                ));
            }
        }
        self.store.validate()
    }

    pub fn parallel_documents(&self) -> usize {
        match self.pipeline.parallel_documents {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Absolute and without `.`/`..` components (lexically: symlinks are left alone).
pub fn absolute(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut clean = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_unknown_ones_are_refused() {
        let device = |d: &str| {
            EmbeddingConfig {
                device: d.into(),
                ..EmbeddingConfig::default()
            }
            .parsed_device()
        };
        assert_eq!(device("cpu"), Ok(Device::Cpu));
        assert_eq!(device("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(device("cuda:3"), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x"] {
            assert!(device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_embedding_service_needs_url_model_and_a_tokenizer_that_fits() {
        let service = |extra: &str| {
            Config::parse(&format!(
                "[embedding]\nprovider = \"openai\"\nurl = \"http://127.0.0.1:8080/v1\"\n{extra}"
            ))
            .unwrap()
            .validate()
        };
        let err = |extra: &str| service(extra).unwrap_err().to_string();
        // OpenAI's own models get cl100k_base and an 8191-token window.
        service("model = \"text-embedding-3-small\"").unwrap();
        assert!(err("").contains("embedding.model"));
        assert!(err("model = \"bge\"").contains("embedding.tokenizer"));
        assert!(
            err("model = \"bge\"\ntokenizer = \"/m/tokenizer.json\"").contains("max_input_tokens")
        );
        service("model = \"bge\"\ntokenizer = \"/m/tokenizer.json\"\nmax_input_tokens = 512")
            .unwrap();
        assert!(
            err("model = \"bge\"\ntokenizer = \"o200k_base\"\nmax_input_tokens = 100")
                .contains("window")
        );
        assert!(err("model = \"text-embedding-3-small\"\ndevice = \"cuda\"")
            .contains("applies to the local model"));
        assert!(
            err("model = \"text-embedding-3-small\"\nmax_concurrency = 0").contains("at least 1")
        );
        let bad_url = Config::parse(
            "[embedding]\nprovider = \"openai\"\nurl = \"localhost:8080\"\nmodel = \"m\"",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(bad_url.contains("not an http"), "{bad_url}");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.chunking.max_tokens, 256);
        assert_eq!(config.chunking.overlap_tokens, 32);
        assert_eq!(config.data_dir, PathBuf::from(".freshet"));
        assert_eq!(config.embedding.pooling, PoolingConfig::Mean);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = Config::parse("[chunking]\nmax_token = 100\n").unwrap_err();
        assert!(err.to_string().contains("max_token"), "{err}");
        let err = Config::parse(
            "[[sources]]\ntype = \"folder\"\nid = \"a\"\npath = \".\"\nexclud = []\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("exclud"), "{err}");
        let err = Config::parse("[[sources]]\ntype = \"ftp\"\nid = \"a\"\n").unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }

    #[test]
    fn validation_catches_bad_settings() {
        let mut config = Config::parse(
            "[[sources]]\ntype = \"folder\"\nid = \"a\"\npath = \".\"\n[[sources]]\ntype = \"folder\"\nid = \"a\"\npath = \"x\"\n",
        )
        .unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("share the id"));
        config.sources.pop();
        config.chunking.overlap_tokens = 200;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("overlap"));
        config.chunking = ChunkingConfig {
            max_tokens: 600,
            overlap_tokens: 0,
            ..Default::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_length"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let mut config = Config::parse(
            "data_dir = \"state\"\n[[sources]]\ntype = \"folder\"\nid = \"a\"\npath = \"docs\"\n",
        )
        .unwrap();
        config.resolve_paths(Path::new("/srv/app"));
        assert_eq!(config.data_dir, PathBuf::from("/srv/app/state"));
        let SourceConfig::Folder(folder) = &config.sources[0] else {
            panic!("a folder source");
        };
        assert_eq!(folder.path, PathBuf::from("/srv/app/docs"));
        assert_eq!(
            absolute(Path::new("/srv/app/../x/./y")),
            PathBuf::from("/srv/x/y")
        );
    }
}
