//! Store failures through the real binary: an unreachable server fails at once naming the
//! host and never a secret; a server that dies mid-run is retried, then the run stops with
//! nothing vouched that is not stored, and the next run converges to a clean run's index.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{copy_dir, free_port, store_toml, StoreKind, Workspace};

const PASSWORD: &str = "Sup3r-S3cret-pw-4711";
const API_KEY: &str = "qdr-key-0c7f1e5b9a2d";

fn freshet(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freshet"));
    command.args(args).arg("--config").arg(config);
    command
}

fn write_config(ws: &Workspace, store: &str) -> PathBuf {
    let path = ws.dir.path().join("freshet.toml");
    std::fs::write(
        &path,
        format!("data_dir = \"data\"\n[[sources]]\ntype = \"folder\"\nid = \"notes\"\npath = \"corpus\"\n\n{store}"),
    )
    .unwrap();
    path
}

/// A run that failed at start: exit 1, the host named, the secret nowhere.
fn assert_failed_naming(out: &Output, host: &str, secret: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains(host), "the host is not named: {all}");
    assert!(!all.contains(secret), "the secret leaked: {all}");
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn an_unreachable_pgvector_fails_naming_the_host_and_not_the_password() {
    let ws = Workspace::with_sample_corpus();
    let port = free_port();
    let config = write_config(
        &ws,
        "[store]\nkind = \"pgvector\"\nurl_env = \"FRESHET_FAILURE_TEST_PG_URL\"\ntable = \"chunks\"\ntimeout_s = 3\n",
    );
    let out = freshet(&config, &["-vv", "sync"])
        .env(
            "FRESHET_FAILURE_TEST_PG_URL",
            format!("postgres://freshet:{PASSWORD}@127.0.0.1:{port}/db"),
        )
        .output()
        .unwrap();
    assert_failed_naming(&out, &format!("127.0.0.1:{port}"), PASSWORD);
    // Nothing was recorded as indexed.
    let status = freshet(&config, &["status", "--json"]).output().unwrap();
    assert!(
        !text(&status).contains("\"indexed\": 1"),
        "{}",
        text(&status)
    );
}

#[test]
fn an_unreachable_qdrant_fails_naming_the_host_and_not_the_api_key() {
    let ws = Workspace::with_sample_corpus();
    let port = free_port();
    let config = write_config(
        &ws,
        &format!("[store]\nkind = \"qdrant\"\nurl = \"http://127.0.0.1:{port}\"\napi_key_env = \"FRESHET_FAILURE_TEST_QDRANT_KEY\"\ncollection = \"docs\"\ntimeout_s = 3\n"),
    );
    let started = Instant::now();
    let out = freshet(&config, &["-vv", "sync"])
        .env("FRESHET_FAILURE_TEST_QDRANT_KEY", API_KEY)
        .output()
        .unwrap();
    assert_failed_naming(&out, &format!("127.0.0.1:{port}"), API_KEY);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );

    // A key variable that is not set is named, and nothing is tried without it.
    let out = freshet(&config, &["sync"])
        .env_remove("FRESHET_FAILURE_TEST_QDRANT_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("FRESHET_FAILURE_TEST_QDRANT_KEY"),
        "{}",
        text(&out)
    );
}

/// A pgvector server of this test's own (scripts/pgvector on a spare port), so it can be
/// stopped and started under a running sync.
struct OwnServer {
    port: u16,
}

impl OwnServer {
    fn script(&self, verb: &str) -> Output {
        Command::new(common::repo_root().join("scripts/pgvector"))
            .arg(verb)
            .env("FRESHET_PGVECTOR_PORT", self.port.to_string())
            .output()
            .unwrap()
    }

    fn start(&self) {
        let out = self.script("start");
        assert!(out.status.success(), "{}", text(&out));
    }

    fn stop(&self) {
        let out = self.script("stop");
        assert!(out.status.success(), "{}", text(&out));
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/freshet",
            self.port
        )
    }

    /// Waits until the run has written points into `view` (so that an outage now hits
    /// writes, whatever the machine's speed).
    fn wait_for_points(&self, view: &str) {
        let url = self.url();
        let sql = format!("SELECT COUNT(*) FROM public.{view}");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let deadline = std::time::Instant::now() + Duration::from_secs(180);
            loop {
                if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                    let count: Result<i64, _> = sqlx::query_scalar(&sql).fetch_one(&pool).await;
                    pool.close().await;
                    if count.is_ok_and(|n| n > 0) {
                        return;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no point was written within 180 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.script("destroy");
    }
}

fn write_notes(dir: &Path, n: usize) {
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 5));
        std::fs::create_dir_all(&sub).unwrap();
        let body = format!("Harbour ferry timetable {i}: boats cross the river at dawn and dusk. ")
            .repeat(30);
        std::fs::write(
            sub.join(format!("note-{i}.md")),
            format!("# Note {i}\n\n{body}\n"),
        )
        .unwrap();
    }
}

fn export(config: &Path, env: &[(&str, String)]) -> BTreeMap<String, serde_json::Value> {
    let mut command = freshet(config, &["export"]);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut point: serde_json::Value = serde_json::from_str(line).unwrap();
            point["payload"]
                .as_object_mut()
                .unwrap()
                .remove("indexed_at");
            (
                point["id"].as_str().unwrap().to_string(),
                point["payload"].take(),
            )
        })
        .collect()
}

#[test]
fn a_pgvector_server_dying_mid_run_is_retried_then_the_run_stops_and_the_next_converges() {
    if StoreKind::pgvector("server dying mid-run").is_none() {
        return;
    }
    let server = OwnServer { port: free_port() };
    server.start();
    let env = [("FRESHET_OWN_PG_URL", server.url())];
    let ws = Workspace::empty();
    write_notes(&ws.corpus(), 240);
    let config = write_config(
        &ws,
        // Small batches: a commit every fraction of a second, so the outages hit writes.
        "[pipeline]\ncommit_batch_chunks = 8\n\n[store]\nkind = \"pgvector\"\nurl_env = \"FRESHET_OWN_PG_URL\"\ntable = \"notes\"\ntimeout_s = 2\n",
    );
    let mut logs = String::new();
    let spawn_sync = || {
        freshet(&config, &["-v", "sync"])
            .env(env[0].0, &env[0].1)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // A short outage once writes are under way: they are retried and the run completes.
    let child = spawn_sync();
    server.wait_for_points("notes");
    server.stop();
    // Longer than the pool's acquire timeout (timeout_s = 2): a write that starts in the
    // outage fails and is retried, rather than waiting in the pool until the server is
    // back (which passed silently under load, and logged no retry).
    std::thread::sleep(Duration::from_millis(5000));
    server.start();
    let out = child.wait_with_output().unwrap();
    logs.push_str(&text(&out));
    assert_eq!(
        out.status.code(),
        Some(0),
        "a short outage failed the run: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("retrying"),
        "no retry was logged: {}",
        text(&out)
    );

    // A long outage: retries run out, the run exits 1.
    for i in 0..240 {
        let path = ws.corpus().join(format!("d{}/note-{i}.md", i % 5));
        std::fs::write(
            &path,
            format!("# Note {i}\n\nEdited: the ferry now runs hourly ({i}). ").repeat(20),
        )
        .unwrap();
    }
    let child = spawn_sync();
    std::thread::sleep(Duration::from_millis(2500));
    server.stop();
    let out = child.wait_with_output().unwrap();
    logs.push_str(&text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Nothing vouched that is not stored: verify finds no missing points.
    server.start();
    let verify = freshet(&config, &["verify", "--json"])
        .env(env[0].0, &env[0].1)
        .output()
        .unwrap();
    logs.push_str(&text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["missing_points"], 0, "{report:#}");
    assert_eq!(report["mismatched_points"], 0, "{report:#}");

    // The next run converges to exactly what a clean run builds.
    let out = freshet(&config, &["sync"])
        .env(env[0].0, &env[0].1)
        .output()
        .unwrap();
    logs.push_str(&text(&out));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let resumed = export(&config, &env);

    let clean = Workspace::empty();
    copy_dir(&ws.corpus(), &clean.corpus());
    let clean_config = write_config(&clean, &store_toml(&StoreKind::Pgvector.config()));
    let out = freshet(&clean_config, &["sync"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let expected = export(&clean_config, &[]);
    assert_eq!(resumed.len(), expected.len());
    assert_eq!(
        resumed, expected,
        "the resumed index differs from a clean run's"
    );
    let verify = freshet(&config, &["verify"])
        .env(env[0].0, &env[0].1)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(!logs.contains(PASSWORD), "the password leaked into output");
}

/// The README's path on a server store through the real binary: sync, query, status,
/// verify, export, a no-op re-sync; no output or log line carries the password or key.
fn end_to_end(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let mut env: Vec<(&str, String)> = Vec::new();
    let secret = match &ws.store {
        freshet::config::StoreConfig::Pgvector(_) => {
            // Trust authentication ignores the password, so one can be given and checked for.
            let url = std::env::var(common::PGVECTOR_URL_ENV).unwrap();
            let with_password = url.replacen(
                "postgres://postgres@",
                &format!("postgres://postgres:{PASSWORD}@"),
                1,
            );
            assert_ne!(url, with_password, "unexpected test URL shape: {url}");
            env.push((common::PGVECTOR_URL_ENV, with_password));
            PASSWORD.to_string()
        }
        _ => std::env::var(common::QDRANT_KEY_ENV).unwrap_or_default(),
    };
    let config = write_config(&ws, &store_toml(&ws.store));
    let run = |args: &[&str]| {
        let mut command = freshet(&config, args);
        for (k, v) in &env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let all = text(&out);
        if !secret.is_empty() {
            assert!(!all.contains(&secret), "{args:?} printed the secret: {all}");
        }
        (
            out.status.code(),
            all,
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out, _) = run(&["-vv", "sync"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = run(&["query", "how often should I oil my bike chain?", "-k", "3"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("bike-maintenance.md"), "{out}");
    let (code, out, _) = run(&["query", "bread", "--source", "docs", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = run(&["status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !out.contains("partial"),
        "a completed first build is still reported partial: {out}"
    );
    let (code, out, _) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::write(
        ws.corpus().join("new-note.md"),
        "# Ferries\n\nThe harbour ferry runs hourly.\n",
    )
    .unwrap();
    let (code, out, stdout) = run(&["plan", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["totals"]["added"], 1, "{plan:#}");
    let (code, out, _) = run(&["sync"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, stdout) = run(&["-vv", "sync", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["totals"]["chunks_embedded"], 0,
        "a no-op re-sync embedded: {report:#}"
    );
    assert_eq!(report["totals"]["points_upserted"], 0);
    let (code, out, _) = run(&["export"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with('{')).count() > 6,
        "{out}"
    );
}

#[test]
fn the_binary_runs_end_to_end_on_pgvector_without_printing_the_password() {
    if let Some(kind) = StoreKind::pgvector("binary end to end") {
        end_to_end(kind);
    }
}

#[test]
fn the_binary_runs_end_to_end_on_qdrant_without_printing_the_api_key() {
    if let Some(kind) = StoreKind::qdrant("binary end to end") {
        end_to_end(kind);
    }
}
