//! Tables as sources, against the real servers (PostgreSQL and MariaDB on 127.0.0.1, as
//! `.ci/run` makes sure) and a real SQLite file, with the real model and store: index a
//! table, update text and non-text columns, insert and delete rows; the next sync embeds
//! only what changed and removes what is gone; a dropped column or an unreachable server
//! fails loudly and deletes nothing.

mod common;

use std::collections::BTreeMap;

use common::{points, str_field, Workspace};
use freshet::config::{Config, SourceConfig, SqlConfig};
use freshet::index::LockMode;
use freshet::pipeline::SyncOptions;
use freshet::store::{Payload, PointId};
use freshet::Index;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIADB_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

async fn connect(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|err| panic!("cannot reach {url} (run .ci/run, which starts it): {err}"))
}

async fn exec(pool: &AnyPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

const UNREACHABLE_URL: &str = "postgres://postgres:hunter2@127.0.0.1:1/test";

/// The SQLite database of `sqlite_table`, one per test process.
fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("freshet-sql-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}?mode=rwc", dir.join("app.db").display())
}

/// The environment variable holding `url` (configs name variables, never URLs). All are
/// set once, before any test touches a database: changing the environment while other
/// threads (C libraries included) may read it is not safe.
fn url_in_env(url: &str) -> String {
    static SET: std::sync::Once = std::sync::Once::new();
    let urls = [
        ("FRESHET_TEST_POSTGRES_URL", POSTGRES_URL.to_string()),
        ("FRESHET_TEST_MARIADB_URL", MARIADB_URL.to_string()),
        ("FRESHET_TEST_SQLITE_URL", sqlite_url()),
        ("FRESHET_TEST_UNREACHABLE_URL", UNREACHABLE_URL.to_string()),
    ];
    SET.call_once(|| {
        for (name, value) in &urls {
            std::env::set_var(name, value);
        }
    });
    urls.iter()
        .find(|(_, value)| value == url)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| panic!("no test variable holds {url}"))
}

async fn open(config: Config) -> Index {
    Index::open_for_sync(config, LockMode::FailIfBusy)
        .await
        .expect("open index (is the model provisioned? run scripts/provision)")
}

fn sql_config(ws: &Workspace, url_env: &str, table: &str) -> Config {
    let mut config = ws.config();
    config.sources = vec![SourceConfig::Sql(SqlConfig {
        id: "rows".into(),
        url_env: url_env.into(),
        table: Some(table.into()),
        query: None,
        key: vec!["id".into()],
        text: "{title}\n\n{body}".into(),
        metadata: vec!["tenant".into()],
        cursor_column: None,
        cursor_overlap_s: 300,
        soft_delete_column: None,
        poll_interval_s: 30,
        notify_channel: None,
        checks: Default::default(),
        partitions: 1,
    })];
    config
}

fn by_row(points: &BTreeMap<PointId, Payload>) -> BTreeMap<String, Payload> {
    points
        .values()
        .map(|p| (str_field(p, "doc_key").to_string(), p.clone()))
        .collect()
}

/// The same story on every database: index, change, re-index only what changed.
async fn index_and_follow_changes(url: &str, tag: &str) {
    let pool = connect(url).await;
    let table = unique(&format!("freshet_{tag}"));
    exec(
        &pool,
        &format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, title VARCHAR(200), body TEXT, tenant VARCHAR(50))"),
    )
    .await;
    exec(&pool, &format!("INSERT INTO {table} (id, title, body, tenant) VALUES
        (1, 'Refund policy', 'Customers can return unused items within 30 days for a full refund of the purchase price.', 'acme'),
        (2, 'Sourdough starter', 'Feed the starter with flour and water every day to keep the wild yeast active.', 'acme'),
        (3, 'Bike chain care', 'Clean and lubricate the bicycle chain every few hundred kilometres.', 'globex')")).await;

    let url_env = url_in_env(url);
    let ws = Workspace::empty();
    let config = sql_config(&ws, &url_env, &table);
    let index = open(config).await;

    let first = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(first.status, "completed", "{first:#?}");
    assert_eq!(first.totals.added, 3);

    let hits = index
        .query("how do I get my money back for a purchase", 1, None, None)
        .await
        .unwrap();
    let top = &hits[0].payload;
    assert_eq!(str_field(top, "doc_key"), "1", "{top:?}");
    assert_eq!(str_field(top, "table"), table);
    assert_eq!(top["row_key"]["id"], "1");
    assert_eq!(str_field(top, "tenant"), "acme");

    // A text column, a non-text column, a new row and a deleted row.
    exec(&pool, &format!("UPDATE {table} SET body = 'Items may be returned within 60 days; refunds go back to the original card.' WHERE id = 1")).await;
    exec(
        &pool,
        &format!("UPDATE {table} SET tenant = 'initech' WHERE id = 2"),
    )
    .await;
    exec(&pool, &format!("INSERT INTO {table} (id, title, body, tenant) VALUES (4, 'Tea brewing', 'Steep green tea at 80 degrees for two minutes.', 'globex')")).await;
    exec(&pool, &format!("DELETE FROM {table} WHERE id = 3")).await;

    let second = index.sync(&SyncOptions::default()).await.unwrap();
    let t = &second.totals;
    assert_eq!(second.status, "completed", "{second:#?}");
    assert_eq!((t.added, t.updated, t.deleted), (1, 2, 1), "{t:#?}");
    // Row 1's new text and row 4 are embedded; row 2's vector is reused.
    assert_eq!(t.chunks_embedded, 2, "{t:#?}");
    assert!(t.chunks_reused >= 1, "{t:#?}");
    let rows = by_row(&points(&index).await);
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["1", "2", "4"]
    );
    assert_eq!(str_field(&rows["2"], "tenant"), "initech");
    assert!(str_field(&rows["1"], "text").contains("60 days"));

    // Nothing changed: nothing is embedded or written.
    let third = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(third.totals.unchanged, 3, "{:#?}", third.totals);
    assert_eq!(third.totals.chunks_embedded, 0);

    // A configured column disappears: the scan fails loudly and nothing is deleted.
    exec(&pool, &format!("ALTER TABLE {table} DROP COLUMN body")).await;
    let drifted = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(drifted.status, "failed", "{drifted:#?}");
    let error = drifted.error.clone().unwrap();
    assert!(error.contains("body"), "{error}");
    assert!(!error.contains(url), "the URL must not leak: {error}");
    assert_eq!(by_row(&points(&index).await).len(), 3);

    exec(&pool, &format!("DROP TABLE {table}")).await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_table() {
    index_and_follow_changes(POSTGRES_URL, "pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_table() {
    index_and_follow_changes(MARIADB_URL, "maria").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_table() {
    let url = sqlite_url();
    index_and_follow_changes(&url, "lite").await;
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("freshet-sql-test-{}", std::process::id())),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_deletes_nothing() {
    let pool = connect(POSTGRES_URL).await;
    let table = unique("freshet_down");
    exec(
        &pool,
        &format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, title TEXT, body TEXT, tenant TEXT)"
        ),
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} VALUES (1, 'A', 'first row', 't'), (2, 'B', 'second row', 't')"
        ),
    )
    .await;
    let url_env = url_in_env(POSTGRES_URL);
    let ws = Workspace::empty();
    let index = open(sql_config(&ws, &url_env, &table)).await;
    assert_eq!(
        index
            .sync(&SyncOptions::default())
            .await
            .unwrap()
            .totals
            .added,
        2
    );
    let before = points(&index).await;

    // Nothing listens on port 1.
    drop(index);
    let index = open(sql_config(&ws, &url_in_env(UNREACHABLE_URL), &table)).await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "failed", "{report:#?}");
    let error = report.error.unwrap();
    assert!(error.contains("cannot connect"), "{error}");
    assert!(
        !error.contains("hunter2"),
        "the password must not leak: {error}"
    );
    assert_eq!(points(&index).await, before);
    assert!(index.verify().await.unwrap().is_clean());

    exec(&pool, &format!("DROP TABLE {table}")).await;
}

/// Change tracking by an `updated_at` column, on a server that has real timestamps.
async fn cursor_tracking(url: &str, tag: &str, timestamp: &str, ago: &dyn Fn(u32) -> String) {
    let pool = connect(url).await;
    let table = unique(&format!("freshet_cursor_{tag}"));
    exec(
        &pool,
        &format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, title VARCHAR(200), body TEXT, tenant VARCHAR(50), updated_at {timestamp} NOT NULL, deleted_at {timestamp} NULL)"),
    )
    .await;
    let now = ago(0);
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} (id, title, body, tenant, updated_at) VALUES
        (1, 'Refund policy', 'Unused items can be returned within 30 days.', 'acme', {now}),
        (2, 'Sourdough', 'Feed the starter daily with flour and water.', 'acme', {now}),
        (3, 'Bike chain', 'Lubricate the chain every few hundred kilometres.', 'globex', {now})"
        ),
    )
    .await;
    let url_env = url_in_env(url);
    let ws = Workspace::empty();
    let mut config = sql_config(&ws, &url_env, &table);
    if let SourceConfig::Sql(sql) = &mut config.sources[0] {
        sql.cursor_column = Some("updated_at".into());
        sql.cursor_overlap_s = 60;
        sql.soft_delete_column = Some("deleted_at".into());
    }
    let index = open(config).await;
    let sync = || async { index.sync(&SyncOptions::default()).await.unwrap() };

    let first = sync().await;
    assert_eq!(first.totals.added, 3, "{first:#?}");
    assert!(index
        .ledger
        .cursor("rows", "rows", None, &index.current_fingerprints())
        .await
        .unwrap()
        .is_some());

    // Committed late with a timestamp older than the cursor, within the overlap window.
    let late = ago(30);
    exec(&pool, &format!("INSERT INTO {table} (id, title, body, tenant, updated_at) VALUES (4, 'Tea', 'Steep green tea for two minutes.', 'globex', {late})")).await;
    let second = sync().await;
    assert_eq!(second.totals.added, 1, "{:#?}", second.totals);
    assert_eq!(second.totals.chunks_embedded, 1);

    // Far older than the overlap: the cursor misses it, but its key is new, so the
    // cursor is dropped and the next scan reads every row.
    let ancient = ago(7200);
    exec(&pool, &format!("INSERT INTO {table} (id, title, body, tenant, updated_at) VALUES (5, 'Kettle', 'Descale the kettle with vinegar.', 'globex', {ancient})")).await;
    let third = sync().await;
    assert_eq!(third.totals.added, 0, "{:#?}", third.totals);
    assert_eq!(third.totals.deleted, 0, "an unseen row is never deleted");
    let fourth = sync().await;
    assert_eq!(fourth.totals.added, 1, "{:#?}", fourth.totals);

    // An update, a hard delete and a soft delete.
    let now = ago(0);
    exec(&pool, &format!("UPDATE {table} SET body = 'Items can be returned within 60 days for a refund.', updated_at = {now} WHERE id = 1")).await;
    exec(&pool, &format!("DELETE FROM {table} WHERE id = 2")).await;
    exec(
        &pool,
        &format!("UPDATE {table} SET deleted_at = {now}, updated_at = {now} WHERE id = 3"),
    )
    .await;
    let fifth = sync().await;
    let t = &fifth.totals;
    assert_eq!((t.added, t.updated, t.deleted), (0, 1, 2), "{t:#?}");
    assert_eq!(t.chunks_embedded, 1, "{t:#?}");
    let rows = by_row(&points(&index).await);
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["1", "4", "5"]
    );
    assert!(str_field(&rows["1"], "text").contains("60 days"));

    exec(&pool, &format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cursor_tracking() {
    cursor_tracking(POSTGRES_URL, "pg", "TIMESTAMPTZ", &|s| {
        format!("now() - interval '{s} seconds'")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cursor_tracking() {
    cursor_tracking(MARIADB_URL, "maria", "DATETIME(6)", &|s| {
        format!("NOW(6) - INTERVAL {s} SECOND")
    })
    .await;
}

/// A table for the checks: no primary key, so duplicate keys can exist.
async fn checks_table(pool: &AnyPool) -> String {
    let table = unique("freshet_checks");
    exec(
        pool,
        &format!("CREATE TABLE {table} (id INTEGER, title TEXT, body TEXT, tenant TEXT, status TEXT, price NUMERIC)"),
    )
    .await;
    exec(pool, &format!("INSERT INTO {table} VALUES
        (1, 'Refund policy', 'Unused items can be returned within 30 days.', 'acme', 'open', 10),
        (2, 'Sourdough', 'Feed the starter daily with flour and water.', 'acme', 'closed', 20),
        (3, 'Bike chain', 'Lubricate the chain every few hundred kilometres.', 'globex', 'open', 30),
        (4, 'Tea', 'Steep green tea for two minutes.', 'globex', 'open', 40),
        (5, 'Kettle', 'Descale the kettle with vinegar.', 'globex', 'closed', 50)")).await;
    table
}

fn checks_config(
    ws: &Workspace,
    url_env: &str,
    table: &str,
    on_violation: freshet::config::OnViolationConfig,
) -> Config {
    let mut config = sql_config(ws, url_env, table);
    if let SourceConfig::Sql(sql) = &mut config.sources[0] {
        sql.checks.on_violation = on_violation;
        sql.checks.columns = [
            ("id".to_string(), "integer".to_string()),
            ("price".to_string(), "number".to_string()),
        ]
        .into();
        sql.checks.not_null = vec!["body".into()];
        sql.checks.allowed = [(
            "status".to_string(),
            vec!["open".to_string(), "closed".to_string()],
        )]
        .into();
        sql.checks.ranges = [("price".to_string(), [0.0, 100.0])].into();
        sql.checks.max_empty_text_share = Some(0.2);
    }
    config
}

/// The checks table on PostgreSQL and an index over it with the checks on.
async fn checks_fixture(
    on_violation: freshet::config::OnViolationConfig,
) -> (AnyPool, String, Workspace, Index) {
    let pool = connect(POSTGRES_URL).await;
    let table = checks_table(&pool).await;
    let url_env = url_in_env(POSTGRES_URL);
    let ws = Workspace::empty();
    let index = open(checks_config(&ws, &url_env, &table, on_violation)).await;
    (pool, table, ws, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_in_fail_mode_stops_the_scan_naming_column_and_row() {
    let (pool, table, _ws, index) = checks_fixture(freshet::config::OnViolationConfig::Fail).await;
    let good = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(good.status, "completed", "{good:#?}");
    assert_eq!(good.totals.added, 5);
    let indexed = points(&index).await;

    // (violation, undo, what the message must name)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "UPDATE {t} SET body = NULL WHERE id = 2",
            "UPDATE {t} SET body = 'Feed the starter daily with flour and water.' WHERE id = 2",
            &["not_null", "`body`", "row 2"],
        ),
        (
            "INSERT INTO {t} VALUES (3, 'Copy', 'A second row with key 3.', 'acme', 'open', 1)",
            "DELETE FROM {t} WHERE title = 'Copy'",
            &["unique_key", "key 3"],
        ),
        (
            "UPDATE {t} SET status = 'weird' WHERE id = 1",
            "UPDATE {t} SET status = 'open' WHERE id = 1",
            &["allowed", "`status`", "row 1"],
        ),
        (
            "UPDATE {t} SET price = 500 WHERE id = 4",
            "UPDATE {t} SET price = 40 WHERE id = 4",
            &["range", "`price`", "row 4"],
        ),
        (
            "UPDATE {t} SET title = '', body = '' WHERE id IN (3, 5)",
            "UPDATE {t} SET title = 'Bike chain', body = 'Lubricate.' WHERE id IN (3, 5)",
            &["max_empty_text_share", "2 of 5 rows"],
        ),
        (
            "ALTER TABLE {t} ALTER COLUMN price TYPE TEXT",
            "ALTER TABLE {t} ALTER COLUMN price TYPE NUMERIC USING price::numeric",
            &["schema drift", "`price`", "expected number"],
        ),
    ];
    for (break_it, undo, names) in cases {
        exec(&pool, &break_it.replace("{t}", &table)).await;
        let report = index.sync(&SyncOptions::default()).await.unwrap();
        assert_eq!(report.status, "failed", "{break_it}: {report:#?}");
        let error = report.error.clone().unwrap();
        for name in *names {
            assert!(
                error.contains(name),
                "{break_it}: {name:?} missing from: {error}"
            );
        }
        assert_eq!(
            (
                report.totals.added,
                report.totals.updated,
                report.totals.deleted
            ),
            (0, 0, 0),
            "{break_it}: nothing may be written: {report:#?}"
        );
        assert_eq!(
            points(&index).await,
            indexed,
            "{break_it}: the index changed"
        );
        exec(&pool, &undo.replace("{t}", &table)).await;
    }
    let checks = index.ledger.checks().await.unwrap();
    assert_eq!(checks[0].0, "rows");
    exec(&pool, &format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_mode_sets_bad_rows_aside_and_indexes_the_rest() {
    let (pool, table, _ws, index) =
        checks_fixture(freshet::config::OnViolationConfig::Quarantine).await;
    assert_eq!(
        index
            .sync(&SyncOptions::default())
            .await
            .unwrap()
            .totals
            .added,
        5
    );

    exec(
        &pool,
        &format!("UPDATE {table} SET body = NULL WHERE id = 2"),
    )
    .await;
    exec(
        &pool,
        &format!("UPDATE {table} SET status = 'weird' WHERE id = 1"),
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} VALUES (6, 'Lamp', 'Replace the bulb.', 'acme', 'open', 999)"
        ),
    )
    .await;
    exec(&pool, &format!("INSERT INTO {table} VALUES (7, 'Desk', 'Assemble the desk with the hex key.', 'acme', 'open', 70)")).await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed_with_failures", "{report:#?}");
    assert_eq!(report.totals.quarantined, 3, "{:#?}", report.totals);
    assert_eq!(report.totals.added, 1, "the good new row is indexed");
    let reasons: BTreeMap<&str, &str> = report
        .failures
        .iter()
        .map(|f| (f.doc_key.as_str(), f.reason.as_str()))
        .collect();
    assert!(reasons["2"].contains("`body`"), "{reasons:?}");
    assert!(reasons["1"].contains("`status`"), "{reasons:?}");
    assert!(reasons["6"].contains("`price`"), "{reasons:?}");
    let rows = by_row(&points(&index).await);
    // Quarantined rows keep serving their last good version; the new bad one is absent.
    assert!(rows.contains_key("1") && rows.contains_key("2") && rows.contains_key("7"));
    assert!(!rows.contains_key("6"));
    let record = index.ledger.get("rows", "6").await.unwrap().unwrap();
    assert_eq!(record.status, freshet::ledger::DocStatus::Quarantined);
    let checks = index.ledger.checks().await.unwrap();
    assert_eq!(checks[0].2["outcome"], "quarantined");
    assert_eq!(checks[0].2["violations"], 3);

    // Unchanged bad rows are not re-reported as changes; fixed ones are indexed again.
    exec(
        &pool,
        &format!("UPDATE {table} SET price = 60 WHERE id = 6"),
    )
    .await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.totals.quarantined, 0, "{:#?}", report.totals);
    assert_eq!(report.totals.added, 1, "{:#?}", report.totals);
    exec(&pool, &format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_scan_deletes_nothing_and_the_next_scan_finishes_the_job() {
    let pool = connect(POSTGRES_URL).await;
    let table = unique("freshet_midscan");
    exec(
        &pool,
        &format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, title TEXT, body TEXT, tenant TEXT, poison INTEGER NOT NULL DEFAULT 1)"),
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO {table} (id, title, body, tenant) VALUES
        (1, 'Refund policy', 'Unused items can be returned within 30 days.', 'acme'),
        (2, 'Sourdough', 'Feed the starter daily with flour and water.', 'acme'),
        (3, 'Bike chain', 'Lubricate the chain every few hundred kilometres.', 'globex'),
        (4, 'Tea', 'Steep green tea for two minutes.', 'globex')"
        ),
    )
    .await;
    let url_env = url_in_env(POSTGRES_URL);
    let ws = Workspace::empty();
    let mut config = sql_config(&ws, &url_env, &table);
    if let SourceConfig::Sql(sql) = &mut config.sources[0] {
        // The division makes the server fail on the poisoned row, after earlier rows
        // were already streamed: a scan that dies half-way.
        sql.table = None;
        sql.query = Some(format!(
            "SELECT id, title, body, tenant FROM {table} WHERE 100 / poison > 0 ORDER BY id"
        ));
    }
    let index = open(config).await;
    assert_eq!(
        index
            .sync(&SyncOptions::default())
            .await
            .unwrap()
            .totals
            .added,
        4
    );

    exec(&pool, &format!("DELETE FROM {table} WHERE id = 4")).await;
    exec(
        &pool,
        &format!("UPDATE {table} SET poison = 0 WHERE id = 3"),
    )
    .await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "failed", "{report:#?}");
    assert!(
        report
            .error
            .as_deref()
            .unwrap_or("")
            .contains("division by zero"),
        "{report:#?}"
    );
    assert_eq!(report.totals.deleted, 0, "a half scan deletes nothing");
    assert!(by_row(&points(&index).await).contains_key("4"));
    assert!(index.verify().await.unwrap().is_clean());

    exec(
        &pool,
        &format!("UPDATE {table} SET poison = 1 WHERE id = 3"),
    )
    .await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    assert_eq!(report.totals.deleted, 1);
    assert!(!by_row(&points(&index).await).contains_key("4"));
    exec(&pool, &format!("DROP TABLE {table}")).await;
}

/// The bundled example end to end: `scripts/load-sample-db` puts Chinook into SQLite, and
/// `freshet watch --config config/chinook.toml` keeps its index fresh as a track changes.
#[test]
fn watch_keeps_the_chinook_example_fresh() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let root = common::repo_root();
    let ws = Workspace::empty();
    let load = Command::new(root.join("scripts/load-sample-db"))
        .arg("sqlite")
        .output()
        .expect("run scripts/load-sample-db");
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let stdout = String::from_utf8_lossy(&load.stdout);
    let url = stdout
        .split("CHINOOK_URL=")
        .nth(1)
        .expect("the loader prints the URL")
        .trim()
        .to_string();
    // A copy, so that this test's edits do not touch the shared sample.
    let path = url.trim_start_matches("sqlite://");
    let copy = ws.dir.path().join("chinook.sqlite");
    std::fs::copy(path, &copy).unwrap();
    let url = format!("sqlite://{}", copy.display());

    let port = common::free_port();
    let freshet = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_freshet"));
        command
            .args([
                "--config",
                root.join("config/chinook.toml").to_str().unwrap(),
            ])
            .args(["--data-dir", ws.data().to_str().unwrap()])
            .args(args)
            .env("CHINOOK_URL", &url);
        command
    };
    let mut watcher = freshet(&["watch", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_until = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_until("the catch-up of 3,503 tracks", &mut || {
        matches!(common::http_get(port, "/readyz"), Some((200, _)))
    });
    let top = |text: &str| -> serde_json::Value {
        let out = freshet(&["query", text, "-k", "1", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        hits["hits"][0]["payload"].clone()
    };
    let hit = top("Bach violin concerto");
    assert_eq!(hit["genre"], "Classical", "{hit}");

    // A row changes in the database; the watcher's next poll indexes it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = connect(&url).await;
        exec(&pool, "UPDATE track SET name = 'Lullaby for a sleepy lighthouse keeper', updated_at = CURRENT_TIMESTAMP WHERE id = 1").await;
        pool.close().await;
    });
    wait_until("the changed track to be searchable", &mut || {
        let hit = top("lullaby for a lighthouse keeper");
        hit["row_key"]["id"] == "1"
    });

    Command::new("kill")
        .args(["-TERM", &watcher.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(watcher.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_notifications_wake_the_watcher_before_its_next_poll() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let pool = connect(POSTGRES_URL).await;
    let table = unique("freshet_notify");
    let channel = format!("{table}_changes");
    exec(
        &pool,
        &format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, title TEXT, body TEXT, tenant TEXT, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"),
    )
    .await;
    exec(&pool, &format!("INSERT INTO {table} (id, title, body, tenant) VALUES (1, 'Refund policy', 'Unused items can be returned within 30 days.', 'acme')")).await;
    // The trigger the README documents.
    exec(&pool, &format!("CREATE FUNCTION {table}_notify() RETURNS trigger AS $$ BEGIN PERFORM pg_notify('{channel}', TG_TABLE_NAME); RETURN NULL; END $$ LANGUAGE plpgsql")).await;
    exec(&pool, &format!("CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify()")).await;

    let url_env = url_in_env(POSTGRES_URL);
    let ws = Workspace::empty();
    let mut config = sql_config(&ws, &url_env, &table);
    if let SourceConfig::Sql(sql) = &mut config.sources[0] {
        sql.cursor_column = Some("updated_at".into());
        // Only a notification can wake it within this test.
        sql.poll_interval_s = 3600;
        sql.notify_channel = Some(channel);
    }
    let index = std::sync::Arc::new(open(config).await);
    let options = freshet::watch::WatchOptions::default();
    let task = tokio::spawn({
        let (index, options) = (index.clone(), options.clone());
        async move { index.watch(&options).await }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !options.health.ready.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no catch-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The listener is set up before the first scan; give the catch-up round a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    exec(&pool, &format!("UPDATE {table} SET body = 'Items can be returned within 60 days.', updated_at = now() WHERE id = 1")).await;
    exec(&pool, &format!("INSERT INTO {table} (id, title, body, tenant) VALUES (2, 'Tea', 'Steep green tea for two minutes.', 'acme')")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = by_row(&points(&index).await);
        if rows.len() == 2 && str_field(&rows["1"], "text").contains("60 days") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the notification did not wake the watcher: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    options.cancel.cancel();
    task.await.unwrap().unwrap();
    exec(&pool, &format!("DROP TABLE {table}")).await;
    exec(&pool, &format!("DROP FUNCTION {table}_notify()")).await;
}
