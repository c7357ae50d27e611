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
        poll_interval_s: 30,
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

    let url_env = unique(&format!("FRESHET_TEST_URL_{}", tag.to_uppercase()));
    std::env::set_var(&url_env, url);
    let ws = Workspace::empty();
    let config = sql_config(&ws, &url_env, &table);
    let index = Index::open_for_sync(config, LockMode::FailIfBusy)
        .await
        .unwrap();

    let first = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(first.status, "completed", "{first:#?}");
    assert_eq!(first.totals.added, 3);

    let hits = index
        .query("how do I get my money back for a purchase", 1, None)
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
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("app.db").display());
    index_and_follow_changes(&url, "lite").await;
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
    let url_env = unique("FRESHET_TEST_URL_DOWN");
    std::env::set_var(&url_env, POSTGRES_URL);
    let ws = Workspace::empty();
    let index = Index::open_for_sync(sql_config(&ws, &url_env, &table), LockMode::FailIfBusy)
        .await
        .unwrap();
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
    std::env::set_var(&url_env, "postgres://postgres:hunter2@127.0.0.1:1/test");
    drop(index);
    let index = Index::open_for_sync(sql_config(&ws, &url_env, &table), LockMode::FailIfBusy)
        .await
        .unwrap();
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
