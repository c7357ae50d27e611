//! Bad input never stops a run and never costs what is already indexed: each bad document
//! is recorded with a readable reason while the rest are indexed.

mod common;

use async_trait::async_trait;
use common::{doc_points, points, repo_root, str_field, Workspace};
use freshet::connectors::{Change, DocContent, RawDoc, Source, SourceContext, SourceError};
use freshet::ledger::DocStatus;
use freshet::pipeline::SyncOptions;

fn write(ws: &Workspace, name: &str, bytes: &[u8]) {
    let path = ws.corpus().join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_document_is_recorded_and_the_rest_are_indexed() {
    let ws = Workspace::with_sample_corpus();
    let fixtures = repo_root().join("tests/fixtures");
    write(
        &ws,
        "bad/corrupt.pdf",
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\ntruncated garbage",
    );
    write(
        &ws,
        "bad/encrypted.pdf",
        &std::fs::read(fixtures.join("encrypted.pdf")).unwrap(),
    );
    write(
        &ws,
        "bad/scanned.pdf",
        &std::fs::read(fixtures.join("scanned.pdf")).unwrap(),
    );
    write(
        &ws,
        "bad/really-a-zip.txt",
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00binary\x00\x00data",
    );
    write(&ws, "bad/empty.md", b"");
    write(&ws, "bad/photo.jpg", b"\xff\xd8\xff\xe0 not really a jpeg");
    write(&ws, "bad/photo.heic", b"\0\0\0\x18ftypheic not read at all");
    write(
        &ws,
        "bad/latin1.txt",
        b"Caf\xe9 cr\xe8me br\xfbl\xe9e is a French dessert of custard and caramel.",
    );
    write(
        &ws,
        "bad/broken-utf8.md",
        b"# Notes\n\nValid caf\xc3\xa9 text with a broken \xff\xfe sequence in the middle.",
    );

    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed_with_failures", "{report:#?}");

    let expect = |key: &str, status: DocStatus, reason_contains: &str| {
        let ledger = index.ledger.clone();
        let key = key.to_string();
        let reason_contains = reason_contains.to_string();
        async move {
            let record = ledger
                .get("docs", &key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} not in ledger"));
            assert_eq!(record.status, status, "{key}: {record:?}");
            let reason = record.reason.clone().unwrap_or_default();
            assert!(
                reason.to_lowercase().contains(&reason_contains),
                "{key}: reason {reason:?} lacks {reason_contains:?}"
            );
            record
        }
    };
    expect("bad/corrupt.pdf", DocStatus::Failed, "not a readable pdf").await;
    expect("bad/encrypted.pdf", DocStatus::Failed, "encrypted").await;
    expect("bad/scanned.pdf", DocStatus::Failed, "no text layer").await;
    expect("bad/really-a-zip.txt", DocStatus::Failed, "binary").await;
    expect("bad/empty.md", DocStatus::Skipped, "empty").await;
    // An image is skipped unread without OCR, naming the setting that reads it.
    expect("bad/photo.jpg", DocStatus::Skipped, "extract.ocr").await;
    expect(
        "bad/photo.heic",
        DocStatus::Skipped,
        "unsupported file type (.heic)",
    )
    .await;
    assert_eq!(report.totals.failed, 4, "{report:#?}");
    assert_eq!(report.failures.len(), 4);

    // Undeclared legacy encodings and broken UTF-8 are indexed, decoded honestly and flagged.
    let latin1 = index
        .ledger
        .get("docs", "bad/latin1.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latin1.status, DocStatus::Indexed);
    assert!(latin1.decode_warning.unwrap().contains("windows-1252"));
    let broken = index
        .ledger
        .get("docs", "bad/broken-utf8.md")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broken.status, DocStatus::Indexed);
    assert!(broken.decode_warning.unwrap().contains("U+FFFD"));
    let all = points(&index).await;
    let latin1_points = doc_points(&all, "bad/latin1.txt");
    assert!(str_field(latin1_points[0].1, "text").contains("Café crème brûlée"));

    // The good documents are all there.
    for key in [
        "guides/bike-maintenance.md",
        "returns-policy.txt",
        "sourdough.html",
        "solar-power.pdf",
    ] {
        assert!(!doc_points(&all, key).is_empty(), "{key} missing");
    }

    // Failed documents are retried only when they change.
    let again = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(again.totals.failed, 0, "{again:#?}");
    assert_eq!(again.totals.chunks_embedded, 0);
    assert_eq!(again.status, "completed");
    std::fs::write(
        ws.corpus().join("bad/really-a-zip.txt"),
        "Now it is plain text about zip archives.",
    )
    .unwrap();
    let fixed = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(fixed.totals.updated + fixed.totals.added, 1, "{fixed:#?}");
    let record = index
        .ledger
        .get("docs", "bad/really-a-zip.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, DocStatus::Indexed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_turns_bad_keeps_its_indexed_points() {
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let before = doc_points(&points(&index).await, "solar-power.pdf").len();
    assert!(before > 0);

    std::fs::write(
        ws.corpus().join("solar-power.pdf"),
        b"%PDF-1.4 damaged in transit",
    )
    .unwrap();
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.totals.failed, 1);
    let record = index
        .ledger
        .get("docs", "solar-power.pdf")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, DocStatus::Failed);
    assert_eq!(
        record.point_ids.len(),
        before,
        "the ledger still vouches for the old points"
    );
    let after = points(&index).await;
    assert_eq!(doc_points(&after, "solar-power.pdf").len(), before);
    let hits = index
        .query("home battery storage for the evening", 1, None, None)
        .await
        .unwrap();
    assert_eq!(str_field(&hits[0].payload, "doc_key"), "solar-power.pdf");
}

/// Reports a file that is deleted before the pipeline reads it, then a real one.
struct VanishingSource {
    dir: std::path::PathBuf,
}

#[async_trait]
impl Source for VanishingSource {
    fn id(&self) -> &str {
        "docs"
    }

    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError> {
        let ghost = self.dir.join("ghost.md");
        std::fs::write(&ghost, "# Ghost\n\nhere for a moment").unwrap();
        let doc = |key: &str| RawDoc {
            key: key.into(),
            version: "v1".into(),
            size: None,
            content: DocContent::File(self.dir.join(key)),
            media: None,
            metadata: Default::default(),
        };
        let ghost_doc = doc("ghost.md");
        std::fs::remove_file(&ghost).unwrap();
        cx.send(Change::Upsert(ghost_doc)).await?;
        cx.send(Change::Upsert(doc("returns-policy.txt"))).await?;
        cx.send(Change::ScanComplete).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_vanishes_between_listing_and_reading_is_skipped_alone() {
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    let source = Box::new(VanishingSource { dir: ws.corpus() });
    let report = index
        .sync_sources(vec![source], &SyncOptions::default())
        .await
        .unwrap();
    // Deleted while being indexed is not the user's problem to fix: skipped, no exit 3.
    assert_eq!(report.totals.failed, 0, "{report:#?}");
    assert_eq!(report.totals.skipped, 1, "{report:#?}");
    assert_eq!(report.totals.added, 1);
    let ghost = index.ledger.get("docs", "ghost.md").await.unwrap().unwrap();
    assert_eq!(ghost.status, DocStatus::Skipped);
    assert!(ghost.reason.unwrap().contains("vanished"));
    assert!(!doc_points(&points(&index).await, "returns-policy.txt").is_empty());
}
