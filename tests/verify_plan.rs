//! verify finds drift made behind freshet's back and --repair fixes it; plan predicts a
//! sync without writing; export, run history, --retry-failed and the writer lock.

mod common;

use std::process::Command;

use common::{doc_points, points, StoreKind, Workspace};
use freshet::index::{DataDirLock, LockMode};
use freshet::pipeline::SyncOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_drift_and_repair_fixes_it() {
    drift_and_repair(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_drift_and_repair_fixes_it_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("verify and repair") {
        drift_and_repair(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_drift_and_repair_fixes_it_on_qdrant() {
    if let Some(kind) = StoreKind::qdrant("verify and repair") {
        drift_and_repair(kind).await;
    }
}

async fn drift_and_repair(kind: StoreKind) {
    let ws = Workspace::with_sample_corpus_on(kind);
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    assert!(index.verify().await.unwrap().is_clean());
    let all = points(&index).await;

    // Points deleted directly in the store: missing.
    let pdf: Vec<_> = doc_points(&all, "solar-power.pdf")
        .iter()
        .map(|(id, _)| **id)
        .collect();
    index.store.delete(pdf.clone()).await.unwrap();
    // Rows deleted directly in the ledger: their points become orphans.
    index
        .ledger
        .remove("docs", &["code/retry.py".to_string()])
        .await
        .unwrap();
    let orphans = doc_points(&all, "code/retry.py").len() as u64;

    let report = index.verify().await.unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.missing_points, pdf.len() as u64, "{report:#?}");
    assert_eq!(report.orphan_points, orphans, "{report:#?}");
    assert_eq!(report.drifted_documents.len(), 1);
    assert_eq!(report.drifted_documents[0].doc_key, "solar-power.pdf");

    let repaired = index.repair(&SyncOptions::default()).await.unwrap();
    assert_eq!(repaired.orphans_deleted, orphans);
    assert!(repaired.after.is_clean(), "{:#?}", repaired.after);
    assert!(index.verify().await.unwrap().is_clean());
    assert_eq!(
        points(&index).await.len(),
        all.len(),
        "repair restores every point"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_payload_mismatches() {
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    // A stale write behind the ledger's back: the store's point says other content.
    let all = points(&index).await;
    let (id, payload) = doc_points(&all, "returns-policy.txt")[0];
    let mut payload = payload.clone();
    payload.insert("content_hash".into(), serde_json::json!("not-the-content"));
    index
        .store
        .upsert(vec![freshet::store::Point {
            id: *id,
            vector: vec![0.1; 384],
            sparse: None,
            payload,
        }])
        .await
        .unwrap();
    let report = index.verify().await.unwrap();
    assert_eq!(report.mismatched_points, 1, "{report:#?}");
    let repaired = index.repair(&SyncOptions::default()).await.unwrap();
    assert!(repaired.after.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_predicts_the_next_sync_and_writes_nothing() {
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    std::fs::remove_file(ws.corpus().join("returns-policy.txt")).unwrap();
    std::fs::write(
        ws.corpus().join("new.md"),
        "# New\n\nA note about ferries.\n",
    )
    .unwrap();
    std::fs::write(
        ws.corpus().join("guides/japan-rail.md"),
        "# Rail\n\nTrains are fast.\n",
    )
    .unwrap();
    let before = points(&index).await;
    let runs_before = index.ledger.recent_runs(100).await.unwrap().len();

    let plan = index.plan().await.unwrap();
    assert_eq!(plan.status, "planned");
    assert_eq!(
        (plan.totals.added, plan.totals.updated, plan.totals.deleted),
        (1, 1, 1),
        "{plan:#?}"
    );
    assert_eq!(plan.totals.chunks_embedded, 2);
    let actions: Vec<(&str, &str)> = plan
        .planned
        .iter()
        .map(|p| (p.action, p.doc_key.as_str()))
        .collect();
    assert!(actions.contains(&("add", "new.md")), "{actions:?}");
    assert!(
        actions.contains(&("update", "guides/japan-rail.md")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("delete", "returns-policy.txt")),
        "{actions:?}"
    );
    assert_eq!(points(&index).await, before, "plan wrote to the store");
    assert_eq!(
        index.ledger.recent_runs(100).await.unwrap().len(),
        runs_before
    );

    let sync = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(
        (
            sync.totals.added,
            sync.totals.updated,
            sync.totals.deleted,
            sync.totals.chunks_embedded
        ),
        (1, 1, 1, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_documents_are_retried_on_request() {
    let ws = Workspace::with_sample_corpus();
    std::fs::write(ws.corpus().join("broken.pdf"), b"%PDF-1.4 broken").unwrap();
    let index = ws.open().await;
    assert_eq!(
        index
            .sync(&SyncOptions::default())
            .await
            .unwrap()
            .totals
            .failed,
        1
    );
    assert_eq!(
        index
            .sync(&SyncOptions::default())
            .await
            .unwrap()
            .totals
            .failed,
        0
    );
    let retried = index
        .sync(&SyncOptions {
            retry_failed: true,
            ..SyncOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(retried.totals.failed, 1, "{retried:#?}");
    assert_eq!(retried.totals.unchanged, 6);
}

fn freshet(ws: &Workspace, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(ws.dir.path())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn export_runs_history_and_plan_from_the_cli() {
    let ws = Workspace::with_sample_corpus();
    assert_eq!(freshet(&ws, &["sync", "corpus"]).status.code(), Some(0));
    std::fs::write(ws.corpus().join("extra.md"), "# Extra\n\nOne more note.\n").unwrap();

    let plan = freshet(&ws, &["plan", "corpus", "--json"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["totals"]["added"], 1);
    assert_eq!(freshet(&ws, &["sync", "corpus"]).status.code(), Some(0));

    let export = freshet(&ws, &["export", "--vectors"]);
    assert_eq!(export.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let status = freshet(&ws, &["status", "--json", "--runs", "5"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(lines.len() as u64, status["points"].as_u64().unwrap());
    assert_eq!(lines[0]["vector"].as_array().unwrap().len(), 384);
    assert!(lines.iter().any(|p| p["payload"]["doc_key"] == "extra.md"));
    let runs = status["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "plans are not runs: {runs:#?}");
    assert_eq!(runs[0]["stats"]["totals"]["added"], 1);
    assert_eq!(runs[1]["stats"]["totals"]["added"], 7 - 1);

    let human = freshet(&ws, &["status", "--runs"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("recent runs:") && text.contains("added 6"),
        "{text}"
    );

    let verify = freshet(&ws, &["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn a_second_writer_fails_clearly_or_waits() {
    let ws = Workspace::with_sample_corpus();
    let data = ws.dir.path().join(".freshet");
    let lock = DataDirLock::acquire(&data, LockMode::FailIfBusy).unwrap();
    let busy = freshet(&ws, &["sync", "corpus"]);
    assert_eq!(busy.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        stderr.contains("another freshet process is writing"),
        "{stderr}"
    );

    let waiting = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(ws.dir.path())
        .args(["sync", "corpus", "--wait"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(lock);
    let done = waiting.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&done.stderr).contains("waiting"));
}
