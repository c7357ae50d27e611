//! An email's attachments are documents of their own, keyed under the message: their own
//! ledger rows (indexed or failed with a reason), points and payload; rewritten, removed
//! and repaired together with the message, through the real model and stores.

mod common;

use std::path::Path;

use common::{copy_dir, crash_at, doc_points, points, str_field, StoreKind, Workspace};
use freshet::ledger::DocStatus;
use freshet::pipeline::{CommitStep, SyncOptions};

/// A MIME message with a plain-text body and these attachments (file name, type, body).
fn message(subject: &str, body: &str, attachments: &[(&str, &str, &str)]) -> String {
    let mut mail = format!(
        "From: Ada <ada@example.com>\r\nTo: ops@example.com\r\nSubject: {subject}\r\n\
         Date: Tue, 1 Dec 2026 09:30:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=XX\r\n\r\n\
         --XX\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
    );
    for (name, content_type, content) in attachments {
        mail.push_str(&format!(
            "--XX\r\nContent-Type: {content_type}\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n{content}\r\n"
        ));
    }
    mail.push_str("--XX--\r\n");
    mail
}

const NOTES: (&str, &str, &str) = (
    "notes.md",
    "text/markdown",
    "# Harbour notes\n\nThe ferry to the lighthouse leaves at dawn from pier seven.",
);
const MINUTES: (&str, &str, &str) = (
    "minutes.txt",
    "text/plain",
    "Minutes: the committee approved the new bicycle racks beside the library.",
);
const BROKEN: (&str, &str, &str) = ("scan.pdf", "application/pdf", "this is not a PDF file");

fn write_first(corpus: &Path) {
    std::fs::create_dir_all(corpus.join("mail")).unwrap();
    // A neighbour, so that deleting the message stays under the mass-deletion guard
    // (which counts messages, not their attachments).
    std::fs::write(
        corpus.join("readme.md"),
        "# Mailbox

Exported messages of the planning team.",
    )
    .unwrap();
    std::fs::write(
        corpus.join("mail/q3.eml"),
        message(
            "Q3 planning",
            "Please read the attached notes before Thursday.",
            &[NOTES, MINUTES, BROKEN],
        ),
    )
    .unwrap();
}

/// The message now carries one changed attachment and no longer the notes.
fn write_second(corpus: &Path) {
    let minutes = (
        MINUTES.0,
        MINUTES.1,
        "Minutes: the committee postponed the bicycle racks until spring.",
    );
    std::fs::write(
        corpus.join("mail/q3.eml"),
        message(
            "Q3 planning",
            "Please read the attached minutes.",
            &[minutes],
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_documents_of_their_own_under_their_message() {
    lifecycle(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_documents_of_their_own_under_their_message_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("attachments as documents") {
        lifecycle(kind).await;
    }
}

async fn lifecycle(kind: StoreKind) {
    let ws = Workspace::empty_on(kind);
    write_first(&ws.corpus());
    let index = ws.open().await;
    let first = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(first.totals.scanned, 2, "{first:#?}");
    // The message and its two readable attachments are indexed (and the neighbour), the
    // broken one failed.
    assert_eq!(first.totals.added, 4, "{first:#?}");
    assert_eq!(first.totals.failed, 1, "{first:#?}");
    assert_eq!(
        first
            .failures
            .iter()
            .map(|f| f.doc_key.as_str())
            .collect::<Vec<_>>(),
        ["mail/q3.eml/scan.pdf"]
    );

    let ledger = &index.ledger;
    let notes = ledger
        .get("docs", "mail/q3.eml/notes.md")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notes.status, DocStatus::Indexed);
    assert_eq!(notes.parent_key.as_deref(), Some("mail/q3.eml"));
    assert_eq!(notes.media_type.as_deref(), Some("markdown"));
    assert!(!notes.point_ids.is_empty());
    let scan = ledger
        .get("docs", "mail/q3.eml/scan.pdf")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(scan.status, DocStatus::Failed);
    assert!(
        scan.reason.as_deref().unwrap_or("").contains("PDF"),
        "{scan:?}"
    );
    let parent = ledger.get("docs", "mail/q3.eml").await.unwrap().unwrap();
    assert_eq!(parent.parent_key, None);
    assert_eq!(
        parent.decode_warning, None,
        "the failure is the attachment's own"
    );

    let all = points(&index).await;
    let notes_points = doc_points(&all, "mail/q3.eml/notes.md");
    assert_eq!(notes_points.len(), notes.point_ids.len());
    let (_, payload) = notes_points[0];
    assert_eq!(str_field(payload, "parent_key"), "mail/q3.eml");
    assert_eq!(str_field(payload, "attachment"), "notes.md");
    assert_eq!(str_field(payload, "media_type"), "markdown");
    assert_eq!(str_field(payload, "title"), "Harbour notes");
    assert_eq!(
        str_field(payload, "subject"),
        "Q3 planning",
        "the message's fields"
    );
    assert!(str_field(payload, "text").contains("pier seven"));
    let body = doc_points(&all, "mail/q3.eml");
    assert!(body.iter().all(
        |(_, p)| !str_field(p, "text").contains("pier seven") && p.get("attachment").is_none()
    ));
    // Found by what it says, under its own key.
    let hits = index
        .query("when does the lighthouse ferry leave", 3, None, None)
        .await
        .unwrap();
    assert_eq!(
        str_field(&hits[0].payload, "doc_key"),
        "mail/q3.eml/notes.md"
    );

    // Nothing changed: nothing is read, and the attachments are not swept as unseen.
    let again = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(
        (again.totals.unchanged, again.totals.deleted),
        (2, 0),
        "{again:#?}"
    );
    assert!(index.verify().await.unwrap().is_clean());

    // The message changes: a removed attachment goes with its points, a changed one is
    // rewritten, and the failed one (no longer attached) goes too.
    write_second(&ws.corpus());
    let second = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(second.totals.deleted, 2, "{second:#?}");
    assert!(ledger
        .get("docs", "mail/q3.eml/notes.md")
        .await
        .unwrap()
        .is_none());
    assert!(ledger
        .get("docs", "mail/q3.eml/scan.pdf")
        .await
        .unwrap()
        .is_none());
    let all = points(&index).await;
    assert!(doc_points(&all, "mail/q3.eml/notes.md").is_empty());
    assert!(doc_points(&all, "mail/q3.eml/minutes.txt")
        .iter()
        .any(|(_, p)| str_field(p, "text").contains("postponed")));
    let verify = index.verify().await.unwrap();
    assert!(verify.is_clean(), "{verify:#?}");

    // The message is deleted: its attachments go with it.
    std::fs::remove_file(ws.corpus().join("mail/q3.eml")).unwrap();
    let third = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(third.totals.deleted, 2, "{third:#?}");
    assert!(points(&index)
        .await
        .values()
        .all(|p| str_field(p, "doc_key") == "readme.md"));
    let left: Vec<String> = index
        .ledger
        .records_page("docs", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.doc_key)
        .collect();
    assert_eq!(left, ["readme.md"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_commit_step_leaves_message_and_attachments_whole() {
    let steps = [
        CommitStep::AfterIntent,
        CommitStep::AfterUpsert,
        CommitStep::AfterStaleDelete,
        CommitStep::AfterCommit,
    ];
    type Mutation = fn(&Path);
    let mutations: [(&str, Mutation); 3] = [
        ("first sync", |_| {}),
        ("attachments change", write_second),
        ("message deleted", |corpus| {
            std::fs::remove_file(corpus.join("mail/q3.eml")).unwrap()
        }),
    ];
    for (name, mutate) in mutations {
        for step in steps {
            if name == "message deleted" && step == CommitStep::AfterUpsert {
                continue; // a deletion writes no points
            }
            let ws = Workspace::empty();
            write_first(&ws.corpus());
            let index = ws.open().await;
            if name != "first sync" {
                index.sync(&SyncOptions::default()).await.unwrap();
            }
            mutate(&ws.corpus());
            let crashed = index.sync(&crash_at(step)).await;
            assert!(
                matches!(crashed, Err(freshet::Error::Injected(_))),
                "{name} / {step:?}: {crashed:?}"
            );
            drop(index);

            let index = ws.open().await;
            let resumed = index.sync(&SyncOptions::default()).await.unwrap();
            assert!(resumed.error.is_none(), "{name} / {step:?}: {resumed:#?}");
            let verify = index.verify().await.unwrap();
            assert!(verify.is_clean(), "{name} / {step:?}: {verify:#?}");
            assert_eq!(verify.pending_documents, 0, "{name} / {step:?}");

            let clean = {
                let other = Workspace::empty();
                copy_dir(&ws.corpus(), &other.corpus());
                let index = other.open().await;
                index.sync(&SyncOptions::default()).await.unwrap();
                (points(&index).await, rows(&index).await)
            };
            assert_eq!(points(&index).await, clean.0, "{name} / {step:?}: points");
            assert_eq!(
                rows(&index).await,
                clean.1,
                "{name} / {step:?}: ledger rows"
            );
        }
    }
}

/// Each ledger row as (key, status, parent, point count).
async fn rows(index: &freshet::index::Index) -> Vec<(String, DocStatus, Option<String>, usize)> {
    index
        .ledger
        .records_page("docs", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.doc_key, r.status, r.parent_key, r.point_ids.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_a_crash_left_pending_are_settled_when_their_message_then_fails() {
    let ws = Workspace::empty();
    write_first(&ws.corpus());
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    write_second(&ws.corpus());
    let crashed = index.sync(&crash_at(CommitStep::AfterUpsert)).await;
    assert!(
        matches!(crashed, Err(freshet::Error::Injected(_))),
        "{crashed:?}"
    );
    drop(index);
    let pending = |rows: &[(String, DocStatus, Option<String>, usize)]| {
        rows.iter()
            .filter(|(_, status, _, _)| *status == DocStatus::Pending)
            .map(|(key, _, _, _)| key.clone())
            .collect::<Vec<_>>()
    };

    // The message can no longer be read (here: over the size limit), so it is not
    // redone; its attachments the crash left pending must not stay pending for ever.
    let mut config = ws.config();
    config.pipeline.max_document_bytes = 200;
    let index = ws.open_with(config).await;
    assert_eq!(
        pending(&rows(&index).await),
        [
            "mail/q3.eml",
            "mail/q3.eml/minutes.txt",
            "mail/q3.eml/notes.md",
            "mail/q3.eml/scan.pdf"
        ]
    );
    let resumed = index.sync(&SyncOptions::default()).await.unwrap();
    assert!(resumed.error.is_none(), "{resumed:#?}");
    let rows = rows(&index).await;
    assert!(pending(&rows).is_empty(), "{rows:?}");
    let minutes = index
        .ledger
        .get("docs", "mail/q3.eml/minutes.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(minutes.status, DocStatus::Failed);
    assert!(
        minutes
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("its message could not be indexed"),
        "{minutes:?}"
    );
    let verify = index.verify().await.unwrap();
    assert!(verify.is_clean(), "{verify:#?}");
    assert_eq!(verify.pending_documents, 0);
    assert!(points(&index)
        .await
        .values()
        .all(|p| str_field(p, "doc_key") == "readme.md"));
}
