//! The `freshet` command line: sync (once or on a schedule), watch, query and status over
//! one data directory.
//!
//! Invariant: stdout carries only results (human text or, with `--json`, one JSON
//! document); logs and progress go to stderr. Exit codes are part of the interface.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use freshet::connectors::WatchControl;
use freshet::eval::Ranking;
use freshet::index::LockMode;
use freshet::ledger::Ledger;
use freshet::pipeline::{RunReport, SyncOptions};
use freshet::schedule::Schedule;
use freshet::serve::{
    remote_search, running_endpoint, serve_metrics, serve_queries, SearchRequest,
};
use freshet::store::QueryMode;
use freshet::telemetry::{init_logging, record_round, Health, LiveCounters};
use freshet::watch::WatchOptions;
use freshet::{Config, Index};
use tokio_util::sync::CancellationToken;

/// Exit code: the run completed, but some documents failed (see the report).
const EXIT_DOC_FAILURES: u8 = 3;
/// Exit code: the run could not complete (bad config, missing root, store or ledger down).
const EXIT_ERROR: u8 = 1;
/// Exit code: `verify` found drift between the ledger and the store.
const EXIT_DRIFT: u8 = 4;
/// Exit code: a one-off sync was stopped by SIGINT or SIGTERM (what it committed stays).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "freshet",
    version,
    about = "Keeps vector indexes fresh: incremental, crash-safe ingestion into Qdrant",
    after_help = "Exit codes: 0 success, 1 error (nothing half-done is recorded), 2 usage error, \
                  3 completed but some documents failed (they are listed; fix and re-run), \
                  4 verify found drift (run `freshet verify --repair`), \
                  130 a one-off sync was interrupted (watch and scheduled syncs exit 0 on SIGINT/SIGTERM)."
)]
struct Cli {
    /// Config file (TOML). Without one, `sync PATH` indexes PATH with defaults.
    #[arg(long, short, global = true, env = "FRESHET_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the ledger and the embedded index (overrides the config).
    #[arg(long, global = true, env = "FRESHET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More logging (-v info, -vv debug). `RUST_LOG` overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Index what changed in the sources since the last sync; remove what is gone.
    Sync {
        /// A folder to index (without --config).
        path: Option<PathBuf>,
        /// Allow a sync to delete more than half of a source's documents.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Wait for another running sync instead of failing.
        #[arg(long)]
        wait: bool,
        /// Retry documents that failed before, even if they did not change.
        #[arg(long)]
        retry_failed: bool,
        /// Keep running and sync on this interval (e.g. 30s, 15m, 1h); runs never overlap.
        #[arg(long, value_name = "DURATION", conflicts_with = "cron")]
        every: Option<String>,
        /// Keep running and sync on this cron schedule (local time; 5 fields, or 6 with
        /// seconds first), e.g. "*/15 * * * *".
        #[arg(long, value_name = "EXPR")]
        cron: Option<String>,
        /// With --every/--cron: serve Prometheus metrics and health checks here.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
    },
    /// Catch up, then keep the index fresh as files change (until SIGINT/SIGTERM; SIGHUP
    /// forces a full rescan). `freshet query` keeps working meanwhile.
    Watch {
        /// A folder to watch (without --config).
        path: Option<PathBuf>,
        /// Allow deleting more than `max_delete_share` of a source's documents at once.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) here.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
    },
    /// Show what the next sync would add, update, delete and embed; writes nothing.
    Plan {
        /// A folder (without --config).
        path: Option<PathBuf>,
        /// List this many documents (0: counts only).
        #[arg(long, default_value_t = 50)]
        list: usize,
    },
    /// Compare the ledger with the index: missing, orphan and mismatched points.
    Verify {
        /// Fix what is found: delete orphans, re-index drifted documents.
        #[arg(long)]
        repair: bool,
        /// A folder (without --config), needed by --repair to re-index.
        path: Option<PathBuf>,
    },
    /// Write every point of the index as JSON lines (id, payload, optionally vector).
    Export {
        /// Include vectors.
        #[arg(long)]
        vectors: bool,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Search the index.
    Query {
        text: String,
        /// Number of results.
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        /// Only search this source.
        #[arg(long)]
        source: Option<String>,
        /// dense (vectors), sparse (keywords: BM25, or full text in PostgreSQL) or
        /// hybrid (both, fused by reciprocal rank). Default: hybrid where the index keeps
        /// keywords, else dense.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<QueryMode>,
        /// Only chunks whose payload field equals the value (repeatable; all must hold),
        /// e.g. --filter doc_key=guides/setup.md
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_filter)]
        filter: Vec<(String, String)>,
        /// Rerank with the configured cross-encoder ([retrieval] rerank_model_dir; on by
        /// default when it is set).
        #[arg(long, overrides_with = "no_rerank")]
        rerank: bool,
        /// Do not rerank, even with a reranker configured.
        #[arg(long)]
        no_rerank: bool,
    },
    /// Score the index against judged queries in the BEIR layout (queries.jsonl and
    /// qrels/<split>.tsv): nDCG@10, recall@10, recall@100, MRR@10 and latency per mode.
    Eval {
        /// The folder holding queries.jsonl and qrels/.
        dir: PathBuf,
        /// Which qrels file: qrels/<split>.tsv.
        #[arg(long, default_value = "test")]
        split: String,
        /// One ranking to score: dense, sparse or hybrid, optionally +rerank (default:
        /// the index's default mode, reranked when a reranker is configured).
        #[arg(long, conflicts_with = "compare")]
        mode: Option<String>,
        /// Several rankings side by side in one run, e.g. dense,hybrid,hybrid+rerank
        /// (the flag alone: every mode the index supports, and the default mode reranked
        /// when a reranker is configured).
        #[arg(long, value_name = "MODES", num_args = 0..=1, default_missing_value = "")]
        compare: Option<String>,
        /// The payload field that names the judged document.
        #[arg(long, default_value = "doc_key")]
        doc_field: String,
        /// Maps the field's value to the judged id: the first capture group (or the whole
        /// match), e.g. '^corpus/(.+)\.txt$'.
        #[arg(long, value_name = "REGEX")]
        doc_id_regex: Option<String>,
        /// Chunks fetched per query to rank documents (a document ranks by its best
        /// chunk; at least 100).
        #[arg(long, default_value_t = 400)]
        chunks: usize,
    },
    /// Documents, chunks and failures per source, and the last run.
    Status {
        /// List this many failed documents with their reasons.
        #[arg(long, default_value_t = 10)]
        failures: usize,
        /// List the most recent runs with their counts and durations.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10")]
        runs: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Sync {
            path,
            allow_mass_delete,
            wait,
            retry_failed,
            every,
            cron,
            metrics_addr,
        } => {
            let config = load_config(&cli, path.as_deref(), true)?;
            if config.sources.is_empty() {
                bail!("nothing to sync: give a folder (`freshet sync PATH`) or a config with [[sources]]");
            }
            let schedule = match (every, cron) {
                (Some(every), _) => Some(Schedule::every(every).map_err(anyhow::Error::msg)?),
                (None, Some(cron)) => Some(Schedule::cron(cron).map_err(anyhow::Error::msg)?),
                (None, None) => None,
            };
            if schedule.is_none() && metrics_addr.is_some() {
                bail!(
                    "--metrics-addr needs --every or --cron (a one-off sync reports with --json)"
                );
            }
            let options = SyncOptions {
                allow_mass_delete: *allow_mass_delete,
                retry_failed: *retry_failed,
                ..SyncOptions::default()
            };
            match schedule {
                None => sync(&cli, config, options, *wait).await,
                Some(schedule) => {
                    let metrics_addr = metrics_addr
                        .clone()
                        .or_else(|| config.watch.metrics_addr.clone());
                    sync_on_schedule(&cli, config, options, *wait, schedule, metrics_addr).await
                }
            }
        }
        Command::Watch {
            path,
            allow_mass_delete,
            metrics_addr,
        } => {
            let config = load_config(&cli, path.as_deref(), true)?;
            if config.sources.is_empty() {
                bail!("nothing to watch: give a folder (`freshet watch PATH`) or a config with [[sources]]");
            }
            let metrics_addr = metrics_addr
                .clone()
                .or_else(|| config.watch.metrics_addr.clone());
            watch(&cli, config, *allow_mass_delete, metrics_addr).await
        }
        Command::Plan { path, list } => {
            let config = load_config(&cli, path.as_deref(), true)?;
            let index = Index::open_for_sync(config, LockMode::WaitIfBusy).await?;
            let mut report = index.plan().await?;
            report.planned.truncate(*list);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_plan(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { repair, path } => {
            let config = load_config(&cli, path.as_deref(), false)?;
            let index = Index::open_for_sync(config, LockMode::WaitIfBusy).await?;
            if *repair {
                let live = Arc::new(LiveCounters::default());
                let options = SyncOptions {
                    live,
                    ..SyncOptions::default()
                };
                let report = index.repair(&options).await?;
                if cli.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_verify(&report.before);
                    println!(
                        "repair: deleted {} orphan points, re-indexed {} documents",
                        report.orphans_deleted, report.documents_reindexed
                    );
                    print_report(&report.sync);
                    println!("after repair:");
                    print_verify(&report.after);
                }
                return Ok(if report.after.is_clean() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_DRIFT)
                });
            }
            let report = index.verify().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_verify(&report);
            }
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DRIFT)
            })
        }
        Command::Export { vectors, output } => {
            let config = load_config(&cli, None, false)?;
            let index = Index::open_for_query(config).await?;
            let count = match output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    index.export(&mut out, *vectors).await?
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout());
                    index.export(&mut out, *vectors).await?
                }
            };
            tracing::info!(points = count, "exported");
            Ok(ExitCode::SUCCESS)
        }
        Command::Query {
            text,
            k,
            source,
            mode,
            filter,
            rerank,
            no_rerank,
        } => {
            let config = load_config(&cli, None, false)?;
            let request = SearchRequest {
                text: text.clone(),
                k: *k,
                source: source.clone(),
                mode: *mode,
                filter: filter.iter().cloned().collect(),
                rerank: match (rerank, no_rerank) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            };
            let hits = query(config, &request).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "query": text, "hits": hits })
                    )?
                );
            } else if hits.is_empty() {
                println!("no results (is anything indexed? see `freshet status`)");
            } else {
                for (rank, hit) in hits.iter().enumerate() {
                    print_hit(rank + 1, hit);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            dir,
            split,
            mode,
            compare,
            doc_field,
            doc_id_regex,
            chunks,
        } => {
            let config = load_config(&cli, None, false)?;
            let pattern = doc_id_regex
                .as_deref()
                .map(regex::Regex::new)
                .transpose()
                .context("--doc-id-regex is not a valid regular expression")?;
            let docs = freshet::eval::DocIds {
                field: doc_field.clone(),
                pattern,
            };
            let queries = freshet::eval::load_beir(dir, split)?;
            if queries.is_empty() {
                bail!(
                    "{} has no judged queries (qrels/{split}.tsv names none with a score above 0)",
                    dir.display()
                );
            }
            let index = Index::open_for_query(config).await?;
            let reranks = index.config.retrieval.rerank_model_dir.is_some();
            let plain = |mode| Ranking {
                mode,
                rerank: reranks,
            };
            let rankings: Vec<Ranking> = match (mode, compare.as_deref()) {
                (Some(mode), _) => vec![mode.parse().map_err(anyhow::Error::msg)?],
                (None, Some("")) => {
                    let modes: &[QueryMode] = if index.info.sparse.is_some() {
                        &QueryMode::ALL
                    } else {
                        &[QueryMode::Dense]
                    };
                    let mut all: Vec<Ranking> = modes
                        .iter()
                        .map(|&mode| Ranking {
                            mode,
                            rerank: false,
                        })
                        .collect();
                    if reranks {
                        all.push(plain(index.default_mode()));
                    }
                    all
                }
                (None, Some(list)) => list
                    .split(',')
                    .map(|m| m.trim().parse::<Ranking>())
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
                (None, None) => vec![plain(index.default_mode())],
            };
            let scores =
                freshet::eval::evaluate(&index, &queries, &rankings, &docs, *chunks).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "dataset": dir.display().to_string(),
                        "split": split,
                        "collection": index.info.collection,
                        "model_id": index.info.model_id,
                        "modes": scores,
                    }))?
                );
            } else {
                println!(
                    "{} ({split}): {} judged queries against {}",
                    dir.display(),
                    queries.len(),
                    index.info.collection
                );
                print!("{}", freshet::eval::table(&scores));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { failures, runs } => {
            let config = load_config(&cli, None, false)?;
            status(&cli, &config, *failures, *runs).await
        }
    }
}

/// Config precedence: --config file, else `freshet.toml` in the working directory, else
/// defaults (with PATH as the only source for `sync PATH`). --data-dir overrides.
fn load_config(cli: &Cli, path: Option<&Path>, for_sync: bool) -> anyhow::Result<Config> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let mut config = match (&cli.config, path) {
        (Some(_), Some(_)) => {
            bail!("give either a PATH or --config, not both (add the folder to the config's [[sources]])")
        }
        (Some(file), None) => Config::load(file)?,
        (None, Some(folder)) => {
            let mut config = Config::for_folder(folder);
            config.resolve_paths(&cwd);
            config
        }
        (None, None) => {
            let local = cwd.join("freshet.toml");
            if local.is_file() {
                Config::load(&local)?
            } else {
                if for_sync {
                    bail!("nothing to sync: give a folder (`freshet sync PATH`) or --config FILE");
                }
                let mut config = Config::default();
                config.resolve_paths(&cwd);
                config
            }
        }
    };
    if let Some(dir) = &cli.data_dir {
        config.data_dir = freshet::config::absolute(dir);
    }
    config.validate()?;
    Ok(config)
}

/// Asks a running watcher (or scheduled sync) when there is one, else opens the index.
async fn query(
    config: Config,
    request: &SearchRequest,
) -> anyhow::Result<Vec<freshet::store::Hit>> {
    if let Some(endpoint) = running_endpoint(&config.data_dir) {
        match remote_search(&endpoint, request).await {
            Ok(hits) => return Ok(hits),
            Err(err @ freshet::Error::Store(freshet::store::StoreError::Rejected(_))) => {
                return Err(err.into())
            }
            // A watcher that was killed leaves its endpoint file behind.
            Err(err) => tracing::info!(error = %err, "no watcher answered; opening the index"),
        }
    }
    let index = Index::open_for_query(config).await?;
    Ok(index
        .query_with(&request.text, request.k, &request.options())
        .await?)
}

fn parse_mode(value: &str) -> Result<QueryMode, String> {
    value.parse()
}

fn parse_filter(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got `{value}`")),
    }
}

/// SIGINT and SIGTERM cancel `token` (a second one exits at once); SIGHUP asks `control`
/// for a full rescan.
fn cancel_on_signals(token: CancellationToken, control: Option<Arc<WatchControl>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM stop the process abruptly");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {
                    if let Some(control) = &control {
                        tracing::info!("SIGHUP: full rescan");
                        control.request_rescan();
                    }
                    continue;
                }
            }
            if token.is_cancelled() {
                eprintln!("stopping now");
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
            eprintln!("stopping: finishing the batch in flight (again to stop at once)");
            token.cancel();
        }
    });
}

async fn watch(
    cli: &Cli,
    config: Config,
    allow_mass_delete: bool,
    metrics_addr: Option<String>,
) -> anyhow::Result<ExitCode> {
    let index = Arc::new(Index::open_for_sync(config, LockMode::FailIfBusy).await?);
    let options = WatchOptions {
        allow_mass_delete,
        on_report: Some(Arc::new({
            let json = cli.json;
            move |report: &RunReport| print_round(report, json)
        })),
        ..WatchOptions::default()
    };
    cancel_on_signals(options.cancel.clone(), Some(options.control.clone()));
    let queries = serve_queries(
        index.clone(),
        &index.config.watch.query_addr,
        options.cancel.clone(),
    )
    .await?;
    if let Some(addr) = metrics_addr {
        serve_metrics(
            &addr,
            options.live.clone(),
            options.health.clone(),
            options.cancel.clone(),
        )
        .await?;
    }
    let watched = index.watch(&options).await;
    options.cancel.cancel();
    let _ = queries.await;
    watched?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// One line per watch round that changed something (a JSON line with --json).
fn print_round(report: &RunReport, json: bool) {
    let t = &report.totals;
    if !(t.changed_anything() || report.error.is_some()) {
        return;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("report serializes")
        );
        return;
    }
    let source = report.sources.first().map_or("*", |s| s.source_id.as_str());
    println!(
        "{} {source}: added {} updated {} deleted {} failed {} (embedded {} chunks, {} ms){}",
        freshet::ledger::now(),
        t.added,
        t.updated,
        t.deleted,
        t.failed,
        t.chunks_embedded,
        report.duration_ms,
        report
            .error
            .as_deref()
            .map(|e| format!(" error: {e}"))
            .unwrap_or_default()
    );
    for failure in &report.failures {
        println!("  failed {}: {}", failure.doc_key, failure.reason);
    }
}

/// `sync --every` / `--cron`: one process, one loaded model, runs one after another.
async fn sync_on_schedule(
    cli: &Cli,
    config: Config,
    mut options: SyncOptions,
    wait: bool,
    schedule: Schedule,
    metrics_addr: Option<String>,
) -> anyhow::Result<ExitCode> {
    let lock = if wait {
        LockMode::WaitIfBusy
    } else {
        LockMode::FailIfBusy
    };
    let index = Arc::new(Index::open_for_sync(config, lock).await?);
    let health = Arc::new(Health::default());
    let cancel = options.cancel.clone();
    cancel_on_signals(cancel.clone(), None);
    let queries = serve_queries(
        index.clone(),
        &index.config.watch.query_addr,
        cancel.clone(),
    )
    .await?;
    if let Some(addr) = metrics_addr {
        serve_metrics(&addr, options.live.clone(), health.clone(), cancel.clone()).await?;
    }
    options.live = Arc::new(LiveCounters::default());
    while !cancel.is_cancelled() {
        let started = SystemTime::now();
        match index.sync(&options).await {
            Ok(report) => {
                for stats in &report.sources {
                    record_round(stats, stats.status(), None);
                }
                let ok = matches!(
                    report.status.as_str(),
                    "completed" | "completed_with_failures"
                );
                health.record(ok, report.error.as_deref());
                if ok {
                    health
                        .ready
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if cli.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print_report(&report);
                }
            }
            Err(err) => {
                // A scheduler keeps going: the next run retries what this one could not do.
                tracing::error!(error = %err, "scheduled sync failed");
                health.record(false, Some(&err.to_string()));
            }
        }
        let next = schedule.next_start(started, SystemTime::now());
        let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
        tracing::info!(next_in_s = wait.as_secs(), "next sync scheduled");
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = queries.await;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn sync(
    cli: &Cli,
    config: Config,
    mut options: SyncOptions,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let lock = if wait {
        LockMode::WaitIfBusy
    } else {
        LockMode::FailIfBusy
    };
    let index = Index::open_for_sync(config, lock).await?;
    let live = Arc::new(LiveCounters::default());
    options.live = live.clone();
    cancel_on_signals(options.cancel.clone(), None);
    let progress = (!cli.json && cli.verbose == 0 && std::io::stderr().is_terminal())
        .then(|| spawn_progress(live.clone()));
    let report = index.sync(&options).await;
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    let report = report?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(match report.status.as_str() {
        "completed" => ExitCode::SUCCESS,
        "completed_with_failures" => ExitCode::from(EXIT_DOC_FAILURES),
        "interrupted" => ExitCode::from(EXIT_INTERRUPTED),
        _ => ExitCode::from(EXIT_ERROR),
    })
}

fn spawn_progress(
    live: Arc<LiveCounters>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("valid template"),
    );
    let shown = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            shown.set_message(format!(
                "scanned {} · done {} · embedded {} chunks",
                LiveCounters::get(&live.scanned),
                LiveCounters::get(&live.finished),
                LiveCounters::get(&live.chunks_embedded)
            ));
            shown.tick();
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    });
    (bar, ticker)
}

fn print_report(report: &RunReport) {
    for s in &report.sources {
        println!("source {}", s.source_id);
        println!(
            "  scanned {}  unchanged {}  added {}  updated {}  deleted {}  failed {}  skipped {}{}",
            s.scanned,
            s.unchanged + s.content_unchanged,
            s.added,
            s.updated,
            s.deleted,
            s.failed,
            s.skipped,
            if s.quarantined > 0 {
                format!("  quarantined {}", s.quarantined)
            } else {
                String::new()
            }
        );
        println!(
            "  embedded {} chunks (reused {})  upserted {} points  deleted {} points  ({:.1}s in the model)",
            s.chunks_embedded,
            s.chunks_reused,
            s.points_upserted,
            s.points_deleted,
            s.embed_ms as f64 / 1000.0
        );
        if !s.scan_complete && s.error.is_none() {
            println!("  scan incomplete: deletions were not applied");
        }
        if let Some(err) = &s.error {
            println!("  error: {err}");
        }
    }
    if !report.failures.is_empty() {
        println!("failed documents (fix them and sync again; they are retried when they change):");
        for f in &report.failures {
            println!("  {} {}: {}", f.source_id, f.doc_key, f.reason);
        }
    }
    println!(
        "run {} {} in {:.1}s",
        report.run_id,
        report.status,
        report.duration_ms as f64 / 1000.0
    );
}

fn print_plan(report: &RunReport) {
    for s in &report.sources {
        println!("source {}", s.source_id);
        if let Some(err) = &s.error {
            println!("  error: {err}");
            continue;
        }
        println!(
            "  would add {}  update {}  delete {}  fail {}  skip {}  (unchanged {})",
            s.added,
            s.updated,
            s.deleted,
            s.failed,
            s.skipped,
            s.unchanged + s.content_unchanged
        );
        println!(
            "  would embed {} chunks (reuse {})  delete {} points",
            s.chunks_embedded, s.chunks_reused, s.points_deleted
        );
    }
    for p in &report.planned {
        if p.action == "touch" {
            continue;
        }
        println!(
            "  {:<6} {} {}{}",
            p.action,
            p.source_id,
            p.doc_key,
            if p.chunks > 0 {
                format!(" ({} chunks, {} to embed)", p.chunks, p.chunks_to_embed)
            } else {
                String::new()
            }
        );
    }
}

fn print_verify(report: &freshet::verify::VerifyReport) {
    println!(
        "collection {}: {} documents, {} points expected, {} in the store",
        report.collection, report.documents_checked, report.points_expected, report.points_in_store
    );
    println!(
        "missing {}  orphan {}  mismatched {}  pending {}",
        report.missing_points,
        report.orphan_points,
        report.mismatched_points,
        report.pending_documents
    );
    for d in report.drifted_documents.iter().take(50) {
        println!(
            "  {} {}: {} missing, {} mismatched",
            d.source_id, d.doc_key, d.missing_points, d.mismatched_points
        );
    }
    if report.is_clean() {
        println!("clean: the index holds exactly what the ledger says");
    } else {
        println!("drift found: run `freshet verify --repair`");
    }
}

fn print_hit(rank: usize, hit: &freshet::store::Hit) {
    let p = &hit.payload;
    let text = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let mut location = text("doc_key").to_string();
    if let Some(page) = p.get("page").and_then(|v| v.as_u64()) {
        location.push_str(&format!(" (page {page})"));
    }
    let headings: Vec<&str> = p
        .get("heading_path")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
        .unwrap_or_default();
    println!(
        "{rank}. {:.3}  {}  [{}]",
        hit.score,
        location,
        text("source_id")
    );
    if !headings.is_empty() {
        println!("   § {}", headings.join(" > "));
    }
    let snippet: String = text("text")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let snippet: String = snippet.chars().take(240).collect();
    println!("   {snippet}");
}

/// One unit's line in `status`: its holder and how current it is.
#[derive(Debug, serde::Serialize)]
struct UnitStatus {
    unit: String,
    source_id: String,
    partition: Option<String>,
    holder: Option<freshet::ledger::Holder>,
    scan_started_ms: Option<i64>,
    last_round_ms: Option<i64>,
    lag_ms: Option<i64>,
}

async fn unit_status(
    config: &Config,
    ledger: &Ledger,
    leases: &dyn freshet::ledger::Leases,
) -> anyhow::Result<Vec<UnitStatus>> {
    let holders = leases.holders().await?;
    let states = ledger.unit_states().await?;
    Ok(freshet::units::all(config)
        .into_iter()
        .map(|(_, unit)| {
            let state = states.iter().find(|s| s.unit == unit.id);
            UnitStatus {
                holder: holders.iter().find(|h| h.unit == unit.id).cloned(),
                partition: unit.partition.map(|p| p.to_string()),
                source_id: unit.source_id,
                scan_started_ms: state.and_then(|s| s.scan_started_ms),
                last_round_ms: state.and_then(|s| s.last_round_ms),
                lag_ms: state.and_then(|s| s.lag_ms),
                unit: unit.id,
            }
        })
        .collect())
}

async fn status(
    cli: &Cli,
    config: &Config,
    failure_limit: usize,
    run_limit: Option<usize>,
) -> anyhow::Result<ExitCode> {
    if !freshet::ledger::exists(config) {
        bail!(
            "no index in {} yet; run `freshet sync` first",
            config.data_dir.display()
        );
    }
    let (ledger, leases) = freshet::ledger::open(config).await?;
    let summaries = ledger.summaries().await?;
    let units = unit_status(config, &ledger, leases.as_ref()).await?;
    let runs = ledger.recent_runs(run_limit.unwrap_or(1).max(1)).await?;
    let failures = ledger.failures(None, failure_limit).await?;
    let checks = ledger.checks().await?;
    let catalog = freshet::store::connect(config).await?;
    let info = catalog.published().await?;
    // The embedded store admits one process at a time; while a sync holds it, the point
    // count is reported as unavailable rather than waited for.
    let points = match &info {
        Some(info) if catalog.single_process() => {
            match freshet::index::DataDirLock::try_exclusive(&config.data_dir) {
                Some(_lock) => match catalog.open_existing(info).await? {
                    Some(store) => Some(store.count(None).await?),
                    None => None,
                },
                None => None,
            }
        }
        Some(info) => match catalog.open_existing(info).await? {
            Some(store) => Some(store.count(None).await?),
            None => None,
        },
        None => None,
    };
    // A first build is published at once and fills while applications query it.
    let partial = match &info {
        Some(info) => ledger
            .collection_completed_at(&info.collection)
            .await?
            .is_none(),
        None => false,
    };
    if cli.json {
        let failures: Vec<_> = failures
            .iter()
            .map(|f| serde_json::json!({"source_id": f.source_id, "doc_key": f.doc_key, "reason": f.reason, "updated_at": f.updated_at}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "data_dir": config.data_dir,
                "store": catalog.location(),
                "published_as": catalog.published_name(),
                "index": info,
                "partial": partial,
                "points": points,
                "ledger": ledger.location(),
                "sources": summaries,
                "units": units,
                "last_run": runs.first(),
                "runs": run_limit.map(|_| &runs),
                "failures": failures,
                "checks": checks
                    .iter()
                    .map(|(source_id, at, report)| serde_json::json!({"source_id": source_id, "checked_at": at, "report": report}))
                    .collect::<Vec<_>>(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("data dir {}", config.data_dir.display());
    if let Some(info) = &info {
        match points {
            Some(n) => println!(
                "index    {} ({} points, model {}, {} dims)",
                info.collection, n, info.model_id, info.dim
            ),
            None => println!(
                "index    {} (point count unavailable while a sync runs)",
                info.collection
            ),
        }
        println!(
            "store    {}, queried as {}",
            catalog.location(),
            catalog.published_name()
        );
        if partial {
            println!(
                "         partial: the first build has not completed a sync of every source yet; applications see what is indexed so far"
            );
        }
    }
    for s in &summaries {
        println!(
            "source {}: {} documents ({} indexed, {} failed, {} skipped, {} pending), {} chunks",
            s.source_id, s.documents, s.indexed, s.failed, s.skipped, s.pending, s.chunks
        );
        if s.pending > 0 {
            println!(
                "  {} documents were being written when a run stopped; the next sync redoes them",
                s.pending
            );
        }
        if s.quarantined > 0 {
            println!(
                "  {} rows quarantined by data-quality checks (listed below)",
                s.quarantined
            );
        }
    }
    if units
        .iter()
        .any(|u| u.holder.is_some() || u.partition.is_some())
    {
        println!("ledger   {}", ledger.location());
        for u in &units {
            let holder = match &u.holder {
                Some(h) if h.live => format!(
                    "held by {} pid {} ({}) since {}",
                    h.host, h.pid, h.mode, h.since
                ),
                Some(h) if !h.worker.is_empty() => format!(
                    "free (its holder {} pid {} stopped; another worker takes it over)",
                    h.host, h.pid
                ),
                _ => "free".to_string(),
            };
            let ago = |ms: Option<i64>| {
                ms.map_or("never".to_string(), |ms| {
                    format!(
                        "{:.0}s ago",
                        (freshet::ledger::now_ms() - ms).max(0) as f64 / 1000.0
                    )
                })
            };
            let lag = u.lag_ms.map_or(String::new(), |ms| {
                format!(", lag {:.1}s", ms as f64 / 1000.0)
            });
            println!(
                "unit {}: {holder}; last full scan {}, last round {}{lag}",
                u.unit,
                ago(u.scan_started_ms),
                ago(u.last_round_ms)
            );
        }
    }
    for (source_id, at, report) in &checks {
        println!(
            "checks {source_id} at {at}: {} ({} violations in {} rows)",
            report["outcome"].as_str().unwrap_or("?"),
            report["violations"],
            report["rows"]
        );
        for example in report["examples"].as_array().into_iter().flatten() {
            println!("  {}", example.as_str().unwrap_or(""));
        }
    }
    if let Some(run) = runs.first() {
        println!(
            "last run {}: {} (started {}, finished {})",
            run.id,
            run.status,
            run.started_at,
            run.finished_at.as_deref().unwrap_or("-")
        );
    }
    if run_limit.is_some() {
        println!("recent runs:");
        for run in &runs {
            let stat = |k: &str| {
                run.stats
                    .as_ref()
                    .and_then(|s| s["totals"][k].as_u64())
                    .unwrap_or(0)
            };
            let seconds = run
                .stats
                .as_ref()
                .and_then(|s| s["duration_ms"].as_u64())
                .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
            println!(
                "  run {:>4} {:<24} {}  added {} updated {} deleted {} failed {} embedded {}  {}",
                run.id,
                run.status,
                run.started_at,
                stat("added"),
                stat("updated"),
                stat("deleted"),
                stat("failed"),
                stat("chunks_embedded"),
                seconds
            );
        }
    }
    if !failures.is_empty() {
        println!("failed and quarantined documents:");
        for f in &failures {
            println!(
                "  {} {}: {}",
                f.source_id,
                f.doc_key,
                f.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
