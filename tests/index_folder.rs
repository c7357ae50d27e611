//! End to end on real parts: the sample corpus (Markdown, text, code, HTML, a 2-page PDF)
//! is extracted, chunked, embedded with the real model and stored in the real embedded
//! Qdrant engine, with a SQLite ledger; then edited, shrunk, deleted and re-synced.

mod common;

use common::{doc_points, points, str_field, Workspace};
use freshet::pipeline::SyncOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natural_language_queries_find_the_right_document() {
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    assert_eq!(report.totals.added, 6, "{report:#?}");
    assert_eq!(report.totals.failed, 0);

    let cases = [
        (
            "how often should I oil my bicycle chain",
            "guides/bike-maintenance.md",
        ),
        (
            "can I send an item back and get my money refunded",
            "returns-policy.txt",
        ),
        (
            "how long should bread dough proof in the fridge",
            "sourdough.html",
        ),
        (
            "storing solar electricity in a battery for the night",
            "solar-power.pdf",
        ),
        (
            "bullet train seat reservations during holidays",
            "guides/japan-rail.md",
        ),
        (
            "retry a failing call with exponential backoff",
            "code/retry.py",
        ),
    ];
    for (query, expected) in cases {
        let hits = index.query(query, 3, None, None).await.unwrap();
        assert!(!hits.is_empty(), "no hits for {query:?}");
        assert_eq!(
            str_field(&hits[0].payload, "doc_key"),
            expected,
            "query {query:?} ranked {:?}",
            hits.iter()
                .map(|h| (str_field(&h.payload, "doc_key").to_string(), h.score))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdf_pages_and_html_cleaning_show_in_payloads() {
    let ws = Workspace::with_sample_corpus();
    // Small chunks, so sections and pages end up in chunks of their own.
    let mut config = ws.config();
    config.chunking.max_tokens = 48;
    config.chunking.overlap_tokens = 0;
    let index = ws.open_with(config).await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let all = points(&index).await;

    let pdf = doc_points(&all, "solar-power.pdf");
    assert!(!pdf.is_empty());
    let pages: Vec<u64> = pdf
        .iter()
        .filter_map(|(_, p)| p.get("page").and_then(|v| v.as_u64()))
        .collect();
    assert!(pages.contains(&1), "pages {pages:?}");
    let battery = pdf
        .iter()
        .find(|(_, p)| str_field(p, "text").contains("battery"))
        .expect("a chunk about batteries");
    let battery_end = battery.1.get("page_end").and_then(|v| v.as_u64());
    let battery_page = battery.1.get("page").and_then(|v| v.as_u64());
    assert!(
        battery_page == Some(2) || battery_end == Some(2),
        "battery text is on page 2: {:?}",
        battery.1
    );
    assert_eq!(str_field(battery.1, "title"), "Home solar power");

    let html = doc_points(&all, "sourdough.html");
    assert!(!html.is_empty());
    let html_text: String = html.iter().map(|(_, p)| str_field(p, "text")).collect();
    for leaked in [
        "tracking",
        "analytics",
        "Newsletter",
        "The Home Bakery",
        "font-family",
    ] {
        assert!(
            !html_text.contains(leaked),
            "{leaked} leaked into {html_text}"
        );
    }
    assert!(html_text.contains("Cold proofing develops flavour"));
    assert!(html.iter().any(|(_, p)| p["heading_path"]
        == serde_json::json!(["Country sourdough loaf", "Shaping and proofing"])));

    // Every payload carries the documented fields.
    for payload in all.values() {
        for field in [
            "source_id",
            "doc_key",
            "chunk_index",
            "text",
            "byte_start",
            "byte_end",
            "page",
            "heading_path",
            "content_hash",
            "fingerprint",
        ] {
            assert!(
                payload.contains_key(field),
                "{field} missing in {payload:?}"
            );
        }
        assert_eq!(str_field(payload, "source_id"), "docs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_touches_only_what_changed() {
    let ws = Workspace::with_sample_corpus();
    let first = ws.sync().await;
    assert_eq!(first.totals.added, 6);
    let index = ws.open().await;
    let before = points(&index).await;
    drop(index);

    // Unchanged: nothing read, nothing embedded, nothing written.
    let again = ws.sync().await;
    assert_eq!(again.totals.unchanged, 6, "{again:#?}");
    assert_eq!(again.totals.chunks_embedded, 0);
    assert_eq!(again.totals.points_upserted, 0);
    assert_eq!(again.totals.points_deleted, 0);
    let index = ws.open().await;
    assert_eq!(points(&index).await, before);
    drop(index);

    // Touched but identical content: read and hashed, not embedded.
    let rail = ws.corpus().join("guides/japan-rail.md");
    let text = std::fs::read_to_string(&rail).unwrap();
    std::fs::write(&rail, &text).unwrap();
    let touched = ws.sync().await;
    assert_eq!(touched.totals.content_unchanged, 1, "{touched:#?}");
    assert_eq!(touched.totals.chunks_embedded, 0);

    // A long document shrinks to one short paragraph: all its old chunks go, nothing
    // else changes.
    let bike = ws.corpus().join("guides/bike-maintenance.md");
    let mut long = String::from("# Bicycle maintenance\n\n");
    for i in 0..40 {
        long.push_str(&format!(
            "## Topic {i}\n\nParagraph {i} explains a maintenance step in detail, with tools, torque values and the order of work.\n\n"
        ));
    }
    std::fs::write(&bike, &long).unwrap();
    let grown = ws.sync().await;
    assert_eq!(grown.totals.updated, 1, "{grown:#?}");
    let index = ws.open().await;
    let grown_points = points(&index).await;
    let long_chunks = doc_points(&grown_points, "guides/bike-maintenance.md").len();
    assert!(long_chunks >= 3, "{long_chunks} chunks");
    drop(index);

    std::fs::write(
        &bike,
        "# Bicycle maintenance\n\nPump the tyres every week.\n",
    )
    .unwrap();
    let shrunk = ws.sync().await;
    assert_eq!(shrunk.totals.updated, 1, "{shrunk:#?}");
    assert_eq!(shrunk.totals.unchanged, 5);
    assert_eq!(shrunk.totals.points_upserted, 1);
    assert_eq!(shrunk.totals.points_deleted as usize, long_chunks - 1);
    let index = ws.open().await;
    let after = points(&index).await;
    let bike_points = doc_points(&after, "guides/bike-maintenance.md");
    assert_eq!(bike_points.len(), 1);
    assert!(str_field(bike_points[0].1, "text").contains("Pump the tyres"));
    for (id, payload) in &before {
        if str_field(payload, "doc_key") != "guides/bike-maintenance.md" {
            assert_eq!(after.get(id), Some(payload), "an unrelated point changed");
        }
    }
    let hits = index
        .query("oil the chain every 300 kilometres", 10, None, None)
        .await
        .unwrap();
    assert!(
        hits.iter()
            .all(|h| !str_field(&h.payload, "text").contains("300 kilometres")),
        "a stale chunk is still searchable"
    );
    drop(index);

    // Delete a file: its points are gone, the rest stay.
    std::fs::remove_file(ws.corpus().join("returns-policy.txt")).unwrap();
    let deleted = ws.sync().await;
    assert_eq!(deleted.totals.deleted, 1, "{deleted:#?}");
    let index = ws.open().await;
    let final_points = points(&index).await;
    assert!(doc_points(&final_points, "returns-policy.txt").is_empty());
    assert_eq!(
        final_points.len(),
        after.len() - doc_points(&after, "returns-policy.txt").len()
    );
    let summaries = index.ledger.summaries().await.unwrap();
    assert_eq!(summaries[0].documents, 5);
    assert_eq!(summaries[0].chunks as usize, final_points.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_root_deletes_nothing() {
    let ws = Workspace::with_sample_corpus();
    ws.sync().await;
    let index = ws.open().await;
    let before = points(&index).await;
    drop(index);

    std::fs::rename(ws.corpus(), ws.dir.path().join("moved")).unwrap();
    let report = ws.sync().await;
    assert_eq!(report.status, "failed");
    let error = report.error.unwrap();
    assert!(error.contains("missing"), "{error}");
    let index = ws.open().await;
    assert_eq!(points(&index).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_would_delete_most_documents_refuses() {
    let ws = Workspace::with_sample_corpus();
    ws.sync().await;
    for name in [
        "returns-policy.txt",
        "sourdough.html",
        "solar-power.pdf",
        "code/retry.py",
    ] {
        std::fs::remove_file(ws.corpus().join(name)).unwrap();
    }
    let refused = ws.sync().await;
    assert_eq!(refused.status, "failed");
    assert!(refused
        .error
        .as_deref()
        .unwrap()
        .contains("--allow-mass-delete"));
    let index = ws.open().await;
    assert_eq!(index.ledger.summaries().await.unwrap()[0].documents, 6);
    let allowed = index
        .sync(&SyncOptions {
            allow_mass_delete: true,
            ..SyncOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(allowed.totals.deleted, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_root_is_refused_and_the_index_kept() {
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let before = points(&index).await;
    std::fs::remove_dir_all(ws.corpus()).unwrap();
    std::fs::create_dir(ws.corpus()).unwrap();
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "failed");
    assert!(report.error.unwrap().contains("would delete 6 of 6"));
    assert_eq!(points(&index).await, before);
}
