//! The ledger on PostgreSQL (the machine's server, a schema per test): the same queries as
//! SQLite, partition ranges that cover every key once, run ids that concurrent workers
//! never share, and leases whose fence refuses a former holder's commit.

mod common;

use std::collections::BTreeSet;

use common::{shared_ledger_config, LEDGER_URL_ENV};
use freshet::config::Config;
use freshet::ledger::{DocRecord, DocStatus, Ledger, LedgerError, Partition, WorkerMode};

fn available(test: &str) -> bool {
    if std::env::var(LEDGER_URL_ENV).is_ok() {
        return true;
    }
    if std::env::var("FRESHET_REQUIRE_PGVECTOR").is_ok_and(|v| v == "1") {
        panic!("{test}: {LEDGER_URL_ENV} is not set (run scripts/test)");
    }
    eprintln!("SKIPPED {test}: {LEDGER_URL_ENV} is not set (scripts/test points it at the machine's PostgreSQL)");
    false
}

fn config(takeover_s: u64) -> Config {
    Config {
        ledger: shared_ledger_config(takeover_s),
        // A shared ledger is validated against a shared store; nothing here opens it.
        store: freshet::config::StoreConfig::Pgvector(freshet::config::PgvectorConfig {
            url_env: "UNUSED".into(),
            schema: "public".into(),
            table: "unused".into(),
            ef_search: 100,
            timeout_s: 30,
            batch_rows: 500,
        }),
        ..Config::default()
    }
}

fn record(key: &str) -> DocRecord {
    DocRecord {
        source_id: "docs".into(),
        doc_key: key.into(),
        version_hint: "v1".into(),
        content_hash: Some("h".into()),
        fingerprint: "f".into(),
        status: DocStatus::Indexed,
        reason: None,
        media_type: Some("markdown".into()),
        collection: "c".into(),
        point_ids: vec![uuid::Uuid::new_v4()],
        pending_point_ids: None,
        chunk_hashes: vec!["x".into()],
        decode_warning: None,
        first_indexed_at: None,
        updated_at: freshet::ledger::now(),
        parent_key: None,
    }
}

async fn all_keys(ledger: &Ledger, partition: Option<Partition>, scope: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ledger
            .keys_page_in("docs", scope, partition, after.as_deref(), 7)
            .await
            .unwrap();
        let Some(last) = page.last().cloned() else {
            break;
        };
        keys.extend(page);
        after = Some(last);
    }
    keys
}

#[tokio::test]
async fn the_postgres_ledger_pages_keys_bytewise_and_by_partition() {
    if !available("postgres ledger queries") {
        return;
    }
    let (ledger, _) = freshet::ledger::open(&config(10)).await.unwrap();
    // Keys whose order differs between bytewise and linguistic collations.
    let keys: Vec<String> = (0..60)
        .map(|n| format!("dir{}/Note-{n}.md", n % 3))
        .chain(["a.md", "B.md", "a/b.md", "a-b.md", "a0.md", "é.md", "Z.md"].map(String::from))
        .collect();
    let records: Vec<DocRecord> = keys.iter().map(|k| record(k)).collect();
    ledger.commit(&records).await.unwrap();

    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(all_keys(&ledger, None, "").await, sorted, "bytewise order");
    let in_a: Vec<String> = all_keys(&ledger, None, "a")
        .await
        .into_iter()
        .filter(|k| freshet::connectors::in_scope("a", k))
        .collect();
    assert_eq!(in_a, ["a/b.md"]);

    for count in [1, 4, 8] {
        let mut union = BTreeSet::new();
        for i in 0..count {
            let partition = Partition::new(i, count);
            let part = all_keys(&ledger, Some(partition), "").await;
            assert!(part.iter().all(|k| partition.contains(k)));
            assert_eq!(
                ledger
                    .document_count("docs", Some(partition))
                    .await
                    .unwrap() as usize,
                part.len()
            );
            for key in part {
                assert!(union.insert(key), "a key in two partitions");
            }
        }
        assert_eq!(
            union.len(),
            keys.len(),
            "{count} partitions cover every key"
        );
    }
    let summary = &ledger.summaries().await.unwrap()[0];
    assert_eq!((summary.documents, summary.chunks), (67, 67));
}

#[tokio::test]
async fn workers_recording_runs_at_once_never_share_a_run_id() {
    if !available("concurrent run ids") {
        return;
    }
    let config = config(10);
    let (a, _) = freshet::ledger::open(&config).await.unwrap();
    let (b, _) = freshet::ledger::open(&config).await.unwrap();
    let stats = serde_json::json!({});
    let record = |ledger: Ledger, worker: &'static str| {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                ids.push(
                    ledger
                        .record_run(
                            &["docs".into()],
                            &freshet::ledger::now(),
                            "completed",
                            &stats,
                            None,
                            worker,
                        )
                        .await
                        .unwrap(),
                );
            }
            ids
        })
    };
    let (x, y) = tokio::join!(record(a.clone(), "a"), record(b, "b"));
    let ids: BTreeSet<i64> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    assert_eq!(ids.len(), 50, "50 runs, 50 distinct ids");
    assert_eq!(a.recent_runs(100).await.unwrap().len(), 50);
}

/// Ends a worker's lease session from outside, as the server does when it stalls.
async fn end_lease_session(worker: &str) {
    let url = std::env::var(LEDGER_URL_ENV).unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
    )
    .bind(format!("freshet-% {worker}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(ended, [true], "one lease session for {worker}");
}

#[tokio::test]
async fn a_unit_has_one_holder_and_a_former_holder_cannot_commit() {
    if !available("lease fencing") {
        return;
    }
    let config = config(10);
    let (ledger_a, leases_a) = freshet::ledger::open(&config).await.unwrap();
    let (ledger_b, leases_b) = freshet::ledger::open(&config).await.unwrap();
    let lease_a = leases_a
        .try_acquire("docs", WorkerMode::Watch)
        .await
        .unwrap()
        .expect("a free unit is taken");
    assert!(!lease_a.taken_over);
    assert!(
        leases_b
            .try_acquire("docs", WorkerMode::Watch)
            .await
            .unwrap()
            .is_none(),
        "one holder at a time"
    );
    assert_eq!(
        leases_b
            .live_workers(WorkerMode::Watch)
            .await
            .unwrap()
            .len(),
        2
    );
    let fence_a = lease_a.fence.clone().unwrap();
    ledger_a
        .commit_fenced(&[record("one.md")], Some(&fence_a))
        .await
        .unwrap();
    let holders = leases_b.holders().await.unwrap();
    assert_eq!(holders.len(), 1);
    assert!(
        holders[0].live && holders[0].worker == leases_a.worker(),
        "{holders:#?}"
    );

    // A's session ends (a stall past the takeover, a lost network): B takes the unit.
    end_lease_session(leases_a.worker()).await;
    let lease_b = loop {
        if let Some(lease) = leases_b
            .try_acquire("docs", WorkerMode::Watch)
            .await
            .unwrap()
        {
            break lease;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        lease_b.taken_over,
        "B knows it took over from a worker that did not release"
    );
    let fence_b = lease_b.fence.clone().unwrap();
    assert!(fence_b.generation > fence_a.generation);

    // A wakes up late: its commits are refused, B's go through.
    let refused = ledger_a
        .commit_fenced(&[record("two.md")], Some(&fence_a))
        .await;
    assert!(
        matches!(refused, Err(LedgerError::LeaseLost { .. })),
        "{refused:?}"
    );
    let refused = ledger_a
        .remove_fenced("docs", &["one.md".to_string()], Some(&fence_a))
        .await;
    assert!(
        matches!(refused, Err(LedgerError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert!(!leases_a.still_held(&lease_a).await.unwrap());
    assert!(
        ledger_b.get("docs", "two.md").await.unwrap().is_none(),
        "nothing of the refused commit"
    );
    assert!(ledger_b.get("docs", "one.md").await.unwrap().is_some());
    ledger_b
        .commit_fenced(&[record("three.md")], Some(&fence_b))
        .await
        .unwrap();
    assert!(leases_b.still_held(&lease_b).await.unwrap());

    // A clean release frees the unit for anyone, and is not a takeover.
    leases_b.release(&lease_b).await.unwrap();
    let again = leases_a
        .try_acquire("docs", WorkerMode::Watch)
        .await
        .unwrap()
        .expect("free again");
    assert!(!again.taken_over);
}

#[tokio::test]
async fn a_sqlite_ledger_is_upgraded_in_place_with_key_hashes() {
    // Rows written before key hashes existed get theirs when the ledger opens, so that
    // partition ranges find them.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_folder(dir.path());
    config.data_dir = dir.path().join("data");
    let (ledger, leases) = freshet::ledger::open(&config).await.unwrap();
    ledger
        .commit(&[record("a.md"), record("b/c.md")])
        .await
        .unwrap();
    let url = format!(
        "sqlite://{}",
        config.data_dir.join("ledger.sqlite").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE documents SET key_hash = NULL")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    drop(ledger);
    let (ledger, _) = freshet::ledger::open(&config).await.unwrap();
    for count in [2, 3] {
        let total: i64 = futures_total(&ledger, count).await;
        assert_eq!(total, 2);
    }
    assert!(leases
        .try_acquire("x", WorkerMode::Sync)
        .await
        .unwrap()
        .unwrap()
        .fence
        .is_none());
}

async fn futures_total(ledger: &Ledger, count: u32) -> i64 {
    let mut total = 0;
    for i in 0..count {
        total += ledger
            .document_count("docs", Some(Partition::new(i, count)))
            .await
            .unwrap();
    }
    total
}
