//! A conformance check every source must pass, for use in the sources' own tests.
//!
//! Invariant checked: a one-off scan reports each document key once, ends in exactly one
//! `ScanComplete` sent last, and reports the same keys and versions when nothing changed;
//! a scan of one partition reports only keys of that partition.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Change, Partition, Source, SourceContext, SourceError};

/// Runs one scan (not following) and returns `key -> version`, checking the scan's shape.
pub async fn scan(source: Box<dyn Source>) -> Result<BTreeMap<String, String>, SourceError> {
    scan_with(source, None).await
}

/// Like [`scan`], for one partition of the source: also checks that every key reported
/// lies in the partition.
pub async fn scan_partition(
    source: Box<dyn Source>,
    partition: Partition,
) -> Result<BTreeMap<String, String>, SourceError> {
    scan_with(source, Some(partition)).await
}

async fn scan_with(
    source: Box<dyn Source>,
    partition: Option<Partition>,
) -> Result<BTreeMap<String, String>, SourceError> {
    let (tx, mut rx) = mpsc::channel(16);
    let cx = SourceContext {
        changes: tx,
        cancel: CancellationToken::new(),
        follow: false,
        cursor: Default::default(),
        partition,
    };
    let run = tokio::spawn(source.run(cx));
    let mut docs = BTreeMap::new();
    let mut complete = false;
    while let Some(change) = rx.recv().await {
        assert!(!complete, "a change arrived after ScanComplete: {change:?}");
        match change {
            Change::Upsert(doc) => {
                let key = doc.key.clone();
                if let Some(p) = partition {
                    assert!(p.contains(&key), "key {key} is not in partition {p}");
                }
                assert!(
                    docs.insert(doc.key, doc.version).is_none(),
                    "key {key} reported twice in one scan"
                );
            }
            Change::Delete(key) => panic!("a one-off scan reported a deletion of {key}"),
            Change::ScanComplete => complete = true,
            // What a table source reports besides its rows.
            Change::Checked(_) | Change::Cursor(_) => {}
            other => panic!("a one-off scan sent {other:?}"),
        }
    }
    run.await.expect("source task panicked")?;
    assert!(complete, "the scan returned Ok without ScanComplete");
    Ok(docs)
}

/// Scans twice without changes in between and checks that both scans agree.
pub async fn check_stable<F>(make: F) -> BTreeMap<String, String>
where
    F: Fn() -> Box<dyn Source>,
{
    let first = scan(make()).await.expect("first scan");
    let second = scan(make()).await.expect("second scan");
    assert_eq!(
        first, second,
        "an unchanged source reported different keys or versions"
    );
    first
}
