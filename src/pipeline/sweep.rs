//! The deletion sweep after a scan: removes the documents the scan covered but no longer
//! saw, and those the source reported deleted, through the same intent-first protocol as a
//! commit, and never past the mass-deletion guard.

use std::collections::HashSet;

use freshet_connectors::{in_scope, DocKey};

use super::commit::{intent, retry};
use super::gate::key_hash;
use super::{CommitStep, Ctx, PlannedChange, SourceStats, SyncOptions, GATE_BATCH, SWEEP_PAGE};
use crate::ledger::DocRecord;
use crate::{Error, Result};

/// After a scan: documents in the ledger that the scan covered (`scope`: `Some(None)` for
/// everything, `Some(Some(scopes))` for a partial scan, `None` for nothing) but did not
/// report are gone from the source, and so are the ones it reported deleted. Their
/// points and rows are removed, behind the mass-deletion guard.
pub(super) async fn sweep(
    ctx: &Ctx,
    scope: Option<Option<&[DocKey]>>,
    seen: &HashSet<u128>,
    deletes: &[DocKey],
    options: &SyncOptions,
    stats: &mut SourceStats,
    planned: &mut Vec<PlannedChange>,
) -> Result<()> {
    let mut gone: Vec<String> = deletes.to_vec();
    let ranges: Vec<&str> = match scope {
        None => Vec::new(),
        Some(None) => vec![""],
        Some(Some(scopes)) => scopes.iter().map(String::as_str).collect(),
    };
    for range in ranges {
        let mut after: Option<String> = None;
        loop {
            let page = ctx
                .ledger
                .keys_page_in(
                    &ctx.source_id,
                    range,
                    ctx.partition,
                    after.as_deref(),
                    SWEEP_PAGE,
                )
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            gone.extend(
                page.into_iter()
                    .filter(|k| in_scope(range, k) && !seen.contains(&key_hash(k))),
            );
            after = Some(last);
        }
    }
    gone.sort();
    gone.dedup();
    if gone.is_empty() {
        return Ok(());
    }
    let total = ctx
        .ledger
        .document_count(&ctx.source_id, ctx.partition)
        .await? as usize;
    let share = gone.len() as f64 / total.max(1) as f64;
    if share > ctx.max_delete_share && !options.allow_mass_delete {
        return Err(Error::MassDelete {
            source_id: ctx.source_id.clone(),
            would_delete: gone.len(),
            total,
            share: share * 100.0,
            limit: ctx.max_delete_share * 100.0,
        });
    }
    for keys in gone.chunks(GATE_BATCH) {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut records: Vec<DocRecord> = ctx
            .ledger
            .lookup(&ctx.source_id, &refs)
            .await?
            .into_values()
            .collect();
        // The attachments a document carried go with it, in the same transactions.
        records.extend(
            ctx.ledger
                .children(&ctx.source_id, &refs)
                .await?
                .into_values()
                .flatten(),
        );
        let keys: Vec<String> = records.iter().map(|r| r.doc_key.clone()).collect();
        let mut intents = Vec::new();
        let mut ids = Vec::new();
        for record in &records {
            let intent = intent(
                ctx,
                &record.doc_key,
                record.parent_key.as_deref(),
                Some(record),
                Vec::new(),
            );
            ids.extend(intent.point_ids.iter().copied());
            intents.push(intent);
            if ctx.dry_run {
                planned.push(PlannedChange {
                    source_id: ctx.source_id.clone(),
                    doc_key: record.doc_key.clone(),
                    action: "delete",
                    chunks: record.point_ids.len(),
                    chunks_to_embed: 0,
                });
            }
        }
        stats.deleted += records.len() as u64;
        stats.points_deleted += ids.len() as u64;
        if ctx.dry_run {
            continue;
        }
        let ledger = &ctx.ledger;
        let store = &ctx.store;
        let fence = ctx.fence();
        retry("ledger intent", || async {
            ledger
                .commit_fenced(&intents, fence)
                .await
                .map_err(Error::from)
        })
        .await?;
        ctx.check_fault(CommitStep::AfterIntent)?;
        ctx.check_lease().await?;
        retry("store delete", || async {
            store.delete(ids.clone()).await.map_err(Error::from)
        })
        .await?;
        ctx.check_fault(CommitStep::AfterStaleDelete)?;
        retry("ledger remove", || async {
            ledger
                .remove_fenced(&ctx.source_id, &keys, fence)
                .await
                .map_err(Error::from)
        })
        .await?;
        ctx.check_fault(CommitStep::AfterCommit)?;
    }
    Ok(())
}
