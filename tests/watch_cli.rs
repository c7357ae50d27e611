//! The real `freshet` binary in its long-running modes: `watch` serves queries, metrics
//! and health while it indexes, stops cleanly on SIGTERM in the middle of a burst, and
//! `sync --every` runs repeatedly without overlapping.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, signal, wait_exit, Workspace};

fn freshet(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freshet"));
    command
        .current_dir(cwd)
        .env_remove("FRESHET_CONFIG")
        .env_remove("FRESHET_DATA_DIR");
    command
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    freshet(cwd).args(args).output().expect("run freshet")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn query_json(cwd: &Path, text: &str) -> serde_json::Value {
    let output = run(cwd, &["query", text, "-k", "3", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn watch_serves_fresh_queries_and_metrics_and_stops_cleanly_mid_burst() {
    let ws = Workspace::with_sample_corpus();
    let cwd = ws.dir.path();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut watcher = freshet(cwd)
        .args(["watch", "corpus", "--metrics-addr", &metrics_addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    wait_until("the watcher to catch up", Duration::from_secs(120), || {
        matches!(http_get(port, "/readyz"), Some((200, _)))
    });
    let (code, health) = http_get(port, "/healthz").unwrap();
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"ready\":true"), "{health}");

    // Queries work while the watcher holds the store, and see what it indexed.
    let hits = query_json(cwd, "refund for a returned item");
    assert!(!hits["hits"].as_array().unwrap().is_empty(), "{hits}");
    // The endpoint takes the query mode and payload filters too (the embedded store is
    // the watcher's, so this query can only have gone through it).
    let output = run(
        cwd,
        &[
            "query",
            "refund",
            "--mode",
            "sparse",
            "--filter",
            "doc_key=returns-policy.txt",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let hits: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let hits = hits["hits"].as_array().unwrap();
    assert!(
        !hits.is_empty()
            && hits
                .iter()
                .all(|h| h["payload"]["doc_key"] == "returns-policy.txt"),
        "{hits:?}"
    );

    // A new file becomes searchable without any sync.
    std::fs::write(
        ws.corpus().join("lighthouse.md"),
        "# Lighthouse keeping\n\nThe lighthouse keeper trims the wick and polishes the great lens every evening before dusk.\n",
    )
    .unwrap();
    wait_until(
        "the new file to be searchable",
        Duration::from_secs(60),
        || {
            let hits = query_json(cwd, "who polishes the lighthouse lens");
            hits["hits"][0]["payload"]["doc_key"] == "lighthouse.md"
        },
    );

    // The round records its metrics after its commit, and a query can see the new file
    // a moment before that.
    wait_until(
        "the round's change-to-indexed time in /metrics",
        Duration::from_secs(30),
        || {
            http_get(port, "/metrics")
                .is_some_and(|(_, m)| m.contains("freshet_change_to_indexed_seconds_bucket"))
        },
    );
    let (code, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "freshet_documents_indexed_total",
        "freshet_chunks_embedded_total",
        "freshet_queue_depth",
        "freshet_change_to_indexed_seconds_bucket",
        "freshet_last_success_timestamp_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    // A burst, and SIGTERM while it is being indexed.
    for i in 0..150 {
        std::fs::write(
            ws.corpus().join(format!("burst-{i}.md")),
            format!("# Burst {i}\n\nNote number {i} about harbour logistics, tides and cargo manifests.\n"),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    sigterm(&watcher);
    let status = wait_exit(&mut watcher, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "a stopped watcher exits 0");
    assert!(
        !ws.dir.path().join(".freshet/watch.json").exists(),
        "the query endpoint file is removed on exit"
    );

    // Whatever the shutdown left undone, the ledger and the store agree...
    let verify = run(cwd, &["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    // ...and the next sync finishes the job.
    let sync = run(cwd, &["sync", "corpus", "--json"]);
    assert_eq!(sync.status.code(), Some(0), "{}", stderr(&sync));
    let verify = run(cwd, &["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    let status = run(cwd, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let source = &status["sources"][0];
    // The 6 sample documents, the lighthouse note and the 150 burst notes.
    assert_eq!(source["indexed"], 157, "{status}");
    assert_eq!(source["pending"], 0, "{status}");
}

#[test]
fn sync_every_runs_repeatedly_and_never_overlaps() {
    let ws = Workspace::with_sample_corpus();
    let cwd = ws.dir.path();
    let mut scheduler = freshet(cwd)
        .args(["sync", "corpus", "--every", "1s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = scheduler.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut reports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while reports.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .expect("a scheduled run reported in time");
        let report: serde_json::Value = serde_json::from_str(&line).unwrap();
        reports.push(report);
        if reports.len() == 2 {
            // Between runs, change something: the next run picks it up.
            std::fs::write(
                ws.corpus().join("added.md"),
                "# Added\n\nA note added between runs.\n",
            )
            .unwrap();
        }
    }
    sigterm(&scheduler);
    let status = wait_exit(&mut scheduler, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));

    assert_eq!(reports[0]["totals"]["added"], 6, "{}", reports[0]);
    assert_eq!(reports[1]["totals"]["unchanged"], 6, "{}", reports[1]);
    let added_later: u64 = reports[1..]
        .iter()
        .map(|r| r["totals"]["added"].as_u64().unwrap())
        .sum();
    assert_eq!(
        added_later, 1,
        "the file added between runs is indexed once"
    );

    let status = run(cwd, &["status", "--runs", "10", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mut runs: Vec<(time::OffsetDateTime, time::OffsetDateTime)> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            let parse = |field: &str| {
                time::OffsetDateTime::parse(
                    run[field].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap()
            };
            (parse("started_at"), parse("finished_at"))
        })
        .collect();
    assert!(runs.len() >= 3, "{status}");
    runs.sort();
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "a run started before the previous one finished: {pair:?}"
        );
    }
}
