//! Several workers on one table: cold-sync throughput with 1, 2 and 3 `freshet sync`
//! processes on a table source with `partitions = 6`, side by side in one run; then the
//! time from a watch worker's death (kill -9, and a pause with SIGSTOP) to its units being
//! held by another worker.
//!
//! Needs the `freshet` binary built in the same profile (`cargo build [--release]`), a
//! PostgreSQL for the shared ledger and the table (`FRESHET_LEDGER_URL`), and pgvector
//! (`FRESHET_PGVECTOR_URL`; `scripts/pgvector start` and `scripts/pgvector url`).
//!
//! ```sh
//! export FRESHET_LEDGER_URL=postgres://postgres@127.0.0.1:5432/postgres
//! export FRESHET_PGVECTOR_URL=$(scripts/pgvector url)
//! cargo build --release && cargo run --release --example workers_bench -- --rows 600
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use freshet::config::Config;

struct Args {
    rows: usize,
    workers: Vec<usize>,
    takeover_s: u64,
    /// ONNX Runtime threads per worker (0: all cores, each).
    threads: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        rows: 600,
        workers: vec![1, 2, 3],
        threads: 0,
        takeover_s: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rows" => args.rows = value.parse()?,
            "--workers" => {
                args.workers = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--takeover-s" => args.takeover_s = value.parse()?,
            "--threads" => args.threads = value.parse()?,
            other => {
                bail!("unknown flag {other} (--rows N --workers 1,2,3 --takeover-s S --threads T)")
            }
        }
    }
    Ok(args)
}

/// The `freshet` binary next to this example's directory (same profile).
fn freshet_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("freshet"))
        .context("no target directory")?;
    if !binary.is_file() {
        bail!(
            "{} is missing: build the binary in the same profile first (cargo build [--release])",
            binary.display()
        );
    }
    Ok(binary)
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Distinct text per row, about 120 tokens.
fn row_text(id: usize) -> String {
    format!(
        "Maintenance log {id}. Crew {} inspected turbine {} at site {} and measured blade \
         erosion of {} micrometres on the leading edge. The gearbox oil sample {} showed \
         iron particles at {} ppm, so the next service was moved to week {}. Notes: the \
         yaw motor {} ran hot during the {} storm; technicians replaced seal kit {} and \
         recalibrated anemometer {} before returning the unit to service.",
        id % 17,
        id * 3 + 1,
        id % 23,
        100 + id % 97,
        id * 7,
        20 + id % 41,
        1 + id % 52,
        id % 5,
        ["spring", "autumn", "winter"][id % 3],
        id * 11 % 997,
        id % 13
    )
}

struct Setup {
    dir: tempfile::TempDir,
    binary: PathBuf,
    table: String,
}

impl Setup {
    /// A config for a fresh ledger schema and a fresh pgvector table.
    fn config(&self, takeover_s: u64, threads: usize) -> Result<PathBuf> {
        let schema = unique("bench_ledger");
        let store = unique("bench_vectors");
        let path = self.dir.path().join(format!("{schema}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"data\"\n\n[[sources]]\ntype = \"sql\"\nid = \"logs\"\nurl_env = \"FRESHET_LEDGER_URL\"\ntable = \"{}\"\nkey = [\"id\"]\ntext = \"{{body}}\"\npartitions = 6\n\n[embedding]\nthreads = {threads}\n\n[ledger]\nurl_env = \"FRESHET_LEDGER_URL\"\nschema = \"{schema}\"\nlease_takeover_s = {takeover_s}\n\n[store]\nkind = \"pgvector\"\nurl_env = \"FRESHET_PGVECTOR_URL\"\ntable = \"{store}\"\n",
                self.table
            ),
        )?;
        Ok(path)
    }

    fn spawn(&self, config: &PathBuf, name: &str, args: &[&str]) -> Result<Child> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))?;
        Ok(Command::new(&self.binary)
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(config)
            .args(["--data-dir", &format!("data-{name}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    async fn open(&self, config: &PathBuf) -> Result<Config> {
        let mut parsed = Config::parse(&std::fs::read_to_string(config)?)?;
        parsed.resolve_paths(self.dir.path());
        Ok(parsed)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if std::env::var("FRESHET_PGVECTOR_URL").is_err() {
        bail!("set FRESHET_PGVECTOR_URL (scripts/pgvector start; scripts/pgvector url)");
    }
    let ledger_url = std::env::var("FRESHET_LEDGER_URL").context(
        "set FRESHET_LEDGER_URL to a PostgreSQL database for the shared ledger and the table",
    )?;
    let setup = Setup {
        dir: tempfile::tempdir()?,
        binary: freshet_binary()?,
        table: unique("bench_logs"),
    };
    let pool = sqlx::PgPool::connect(&ledger_url).await?;
    sqlx::query(&format!(
        "CREATE TABLE {} (id INT PRIMARY KEY, body TEXT NOT NULL)",
        setup.table
    ))
    .execute(&pool)
    .await?;
    for start in (0..args.rows).step_by(500) {
        let ids: Vec<i32> = (start..(start + 500).min(args.rows))
            .map(|i| i as i32)
            .collect();
        let bodies: Vec<String> = ids.iter().map(|&i| row_text(i as usize)).collect();
        sqlx::query(&format!(
            "INSERT INTO {} SELECT * FROM UNNEST($1::int[], $2::text[])",
            setup.table
        ))
        .bind(&ids)
        .bind(&bodies)
        .execute(&pool)
        .await?;
    }
    println!(
        "table {} rows, partitions = 6, {} cores, {} ONNX Runtime threads per worker, binary {}",
        args.rows,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.threads == 0 {
            "all cores".to_string()
        } else {
            args.threads.to_string()
        },
        setup.binary.display()
    );

    let mut base = None;
    for &workers in &args.workers {
        let config = setup.config(args.takeover_s, args.threads)?;
        let started = Instant::now();
        let mut children = (0..workers)
            .map(|i| setup.spawn(&config, &format!("sync-{workers}-{i}"), &["sync"]))
            .collect::<Result<Vec<_>>>()?;
        for child in &mut children {
            let status = child.wait()?;
            if !status.success() {
                bail!(
                    "a sync worker failed ({status}); see the logs in {}",
                    setup.dir.path().display()
                );
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let (ledger, _) = freshet::ledger::open(&setup.open(&config).await?).await?;
        let chunks: i64 = ledger.summaries().await?.iter().map(|s| s.chunks).sum();
        let runs = ledger.recent_runs(10).await?;
        let per_worker: Vec<usize> = runs
            .iter()
            .map(|r| {
                r.stats
                    .as_ref()
                    .map_or(0, |s| s["sources"].as_array().map_or(0, Vec::len))
            })
            .collect();
        let rate = chunks as f64 / seconds;
        let ratio = base.map_or(1.0, |b: f64| rate / b);
        base.get_or_insert(rate);
        println!(
            "cold sync, {workers} worker(s): {seconds:.1} s wall (process start to exit, model load included), {chunks} chunks, {rate:.1} chunks/s, {ratio:.2}x one worker; units per worker {per_worker:?}"
        );
    }

    for (how, signal) in [("kill -9", "-KILL"), ("SIGSTOP", "-STOP")] {
        let config = setup.config(args.takeover_s, args.threads)?;
        let parsed = setup.open(&config).await?;
        let mut first = setup.spawn(&config, &format!("watch-a-{signal}"), &["watch"])?;
        let held_by = |pid: u32| {
            let parsed = parsed.clone();
            async move {
                let (_, leases) = freshet::ledger::open(&parsed).await?;
                let holders = leases.holders().await?;
                anyhow::Ok(
                    holders
                        .iter()
                        .filter(|h| h.live && h.pid == pid as i64)
                        .count(),
                )
            }
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while held_by(first.id()).await? < 6 {
            if Instant::now() > deadline {
                bail!("the first watcher never held the six units");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut second = setup.spawn(&config, &format!("watch-b-{signal}"), &["watch"])?;
        // Let the second worker join and the shares settle (3 + 3).
        let deadline = Instant::now() + Duration::from_secs(120);
        while held_by(second.id()).await? < 3 {
            if Instant::now() > deadline {
                bail!("the second watcher never took its share");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Command::new("kill")
            .args([signal, &first.id().to_string()])
            .status()?;
        let died = Instant::now();
        while held_by(second.id()).await? < 6 {
            if died.elapsed() > Duration::from_secs(120) {
                bail!("the units were not taken over");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "{how}: the dead worker's 3 units held by the other after {:.2} s (lease_takeover_s = {}; kill -9 frees the lock when the connection drops, a paused worker's session is ended by the server after the takeover time)",
            died.elapsed().as_secs_f64(),
            args.takeover_s
        );
        let _ = first.kill();
        let _ = first.wait();
        Command::new("kill")
            .args(["-TERM", &second.id().to_string()])
            .status()?;
        second.wait()?;
    }
    sqlx::query(&format!("DROP TABLE {}", setup.table))
        .execute(&pool)
        .await?;
    Ok(())
}
