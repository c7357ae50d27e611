//! The real `freshet` binary: `sync PATH` with no config, `query`, `status`, `--json`
//! output and exit codes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Workspace;

fn freshet(cwd: &Path, args: &[&str]) -> Output {
    common::freshet_cli(cwd, args)
}

fn json(output: &Output) -> serde_json::Value {
    common::stdout_json(output)
}

#[test]
fn sync_a_path_then_query_and_status() {
    let ws = Workspace::with_sample_corpus();
    let cwd = ws.dir.path();

    let sync = freshet(cwd, &["sync", "corpus", "--json"]);
    assert_eq!(
        sync.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let report = json(&sync);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["totals"]["added"], 6);
    assert!(
        cwd.join(".freshet/ledger.sqlite").is_file(),
        "default data dir is ./.freshet"
    );

    let query = freshet(
        cwd,
        &["query", "refund for a returned item", "-k", "2", "--json"],
    );
    assert_eq!(
        query.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&query.stderr)
    );
    let hits = json(&query);
    assert_eq!(hits["hits"][0]["payload"]["doc_key"], "returns-policy.txt");
    assert_eq!(hits["hits"].as_array().unwrap().len(), 2);

    let human = freshet(cwd, &["query", "sourdough proofing time"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.starts_with("1. "), "{text}");
    assert!(text.contains("sourdough.html"), "{text}");

    let status = freshet(cwd, &["status", "--json"]);
    assert_eq!(status.status.code(), Some(0));
    let status = json(&status);
    assert_eq!(status["sources"][0]["documents"], 6);
    assert_eq!(status["last_run"]["status"], "completed");
    assert!(status["points"].as_u64().unwrap() >= 6);

    let again = freshet(cwd, &["sync", "corpus", "--json"]);
    let again = json(&again);
    assert_eq!(again["totals"]["unchanged"], 6);
    assert_eq!(again["totals"]["chunks_embedded"], 0);
}

#[test]
fn per_document_failures_exit_with_code_3_and_are_listed() {
    let ws = Workspace::with_sample_corpus();
    std::fs::write(ws.corpus().join("broken.pdf"), b"%PDF-1.4 not really").unwrap();
    let sync = freshet(ws.dir.path(), &["sync", "corpus"]);
    assert_eq!(
        sync.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let out = String::from_utf8_lossy(&sync.stdout);
    assert!(out.contains("broken.pdf"), "{out}");
    assert!(out.contains("completed_with_failures"), "{out}");
}

#[test]
fn usage_errors_are_clear() {
    let ws = Workspace::empty();
    let nothing = freshet(ws.dir.path(), &["sync"]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("give a folder"));

    let no_index = freshet(ws.dir.path(), &["query", "anything"]);
    assert_eq!(no_index.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_index.stderr).contains("run `freshet sync` first"));

    let missing = freshet(ws.dir.path(), &["sync", "no-such-folder"]);
    assert_eq!(missing.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&missing.stdout);
    assert!(stdout.contains("missing or not a directory"), "{stdout}");

    let bad_config = ws.dir.path().join("bad.toml");
    std::fs::write(&bad_config, "[chunking]\nmax_tokns = 10\n").unwrap();
    let bad = freshet(
        ws.dir.path(),
        &["sync", "--config", bad_config.to_str().unwrap()],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_tokns"));
}

/// A file the indexing user cannot read. Root reads everything, so when the tests run as
/// root the sync runs as `nobody` (setpriv), with the model copied where `nobody` can
/// read it.
#[test]
fn an_unreadable_file_fails_alone() {
    let ws = Workspace::with_sample_corpus();
    let secret = ws.corpus().join("secret.md");
    std::fs::write(&secret, "# Secret\n\nNobody may read this.").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();

    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let output = if is_root {
        let cache = ws.dir.path().join("cache");
        common::copy_dir(&freshet::embed::locate::cache_dir(), &cache);
        let open_up = |p: &Path| {
            Command::new("chmod")
                .args(["-R", "a+rwX"])
                .arg(p)
                .status()
                .unwrap();
        };
        open_up(ws.dir.path());
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_freshet"))
            .args(["sync", "corpus", "--json"])
            .current_dir(ws.dir.path())
            .env("FRESHET_CACHE_DIR", &cache)
            .env("HOME", ws.dir.path())
            .output()
            .expect("setpriv runs freshet as nobody")
    } else {
        freshet(ws.dir.path(), &["sync", "corpus", "--json"])
    };
    assert_eq!(
        output.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json(&output);
    assert_eq!(report["totals"]["added"], 6);
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["doc_key"], "secret.md");
    let reason = failures[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot be read") && reason.contains("ermission"),
        "{reason}"
    );
}

#[test]
fn a_missing_model_says_what_to_run() {
    let ws = Workspace::with_sample_corpus();
    let output = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(ws.dir.path())
        .args(["sync", "corpus"])
        .env("FRESHET_CACHE_DIR", ws.dir.path().join("empty-cache"))
        .env_remove("FRESHET_MODEL_DIR")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scripts/provision"), "{stderr}");
    assert!(stderr.contains("empty-cache"), "{stderr}");
}
