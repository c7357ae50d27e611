//! Optimising an embedded shard beside the live one: the engine indexes (HNSW), vacuums
//! and merges a copy, and the copy replaces the shard by two renames.
//!
//! Invariant: whenever the process dies, the collection directory is (or is restored on
//! the next open to) one complete shard, the one before or the one after, never a mix.
//! qdrant-edge 0.7 writes an optimised segment before it deletes the ones it replaces and
//! does not deduplicate points on load, so optimising the live shard in place could leave
//! two copies of the same points after a kill -9. Here the engine only ever optimises a
//! copy, and a copy counts only once it is complete and marked so.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qdrant_edge::EdgeShard;

use crate::store::StoreError;

/// Marks a copy whose optimisation finished and was flushed (inside the copy).
const COMPLETE: &str = "freshet-optimized";

/// The steps of an optimisation after which a test can stop it, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizeStep {
    /// The shard was copied beside itself.
    Copied,
    /// The engine optimised the copy and flushed it; not yet marked complete.
    Optimized,
    /// The copy is marked complete.
    Marked,
    /// The live shard was moved aside.
    Retired,
    /// The copy took the live shard's place; the old one is not yet removed.
    Switched,
}

/// The copy being optimised, and the previous shard while the copy takes its place.
fn siblings(path: &Path) -> (PathBuf, PathBuf) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        path.with_file_name(format!("{name}.optimizing")),
        path.with_file_name(format!("{name}.retired")),
    )
}

/// Whether a directory name is what an optimisation of `collection` leaves beside it.
pub fn is_beside(name: &str, collection: &str) -> bool {
    name.strip_prefix(collection)
        .is_some_and(|rest| rest == ".optimizing" || rest == ".retired")
}

/// Before a shard is loaded: finishes a switch a crash interrupted (the marked copy
/// takes the place), or undoes it (the retired shard comes back), and removes what an
/// interrupted optimisation left beside the collection.
pub fn recover(path: &Path) -> io::Result<()> {
    let (copy, retired) = siblings(path);
    if !path.exists() {
        if copy.join(COMPLETE).is_file() {
            tracing::info!(collection = %path.display(), "finishing an optimisation a crash interrupted");
            fs::rename(&copy, path)?;
            sync_parent(path)?;
        } else if retired.exists() {
            tracing::info!(collection = %path.display(), "undoing an optimisation a crash interrupted");
            fs::rename(&retired, path)?;
            sync_parent(path)?;
        }
    }
    let _ = fs::remove_file(path.join(COMPLETE));
    for leftover in [copy, retired] {
        if leftover.exists() {
            fs::remove_dir_all(&leftover)?;
        }
    }
    Ok(())
}

/// The shard in use, shared with readers; `None` once an optimisation could not put a
/// shard back (every later operation is refused until the store is opened again).
/// A tokio lock, so that readers wait without holding a thread; this module runs on a
/// blocking thread and takes it with `blocking_*`.
pub type Slot = tokio::sync::RwLock<Option<Arc<EdgeShard>>>;

/// Optimises a copy of the shard at `path` and puts it in the shard's place, in `slot`.
/// Returns whether the engine changed anything. No write may run meanwhile. Reads go on,
/// on the shard before, until the switch; during the switch (two renames and loading
/// the optimised shard) they wait. `stop` is asked after each step (tests stop there, as
/// a crash would: the slot is then emptied, as by a process that died).
///
/// On an error, the shard in use stays the one before: untouched before the switch, put
/// back and reloaded after; if even that fails, [`OptimizeError::Stranded`] says the store
/// must be opened again (the next open's [`recover`] settles the directories).
pub fn optimize_beside(
    path: &Path,
    slot: &Slot,
    stop: &dyn Fn(OptimizeStep) -> bool,
) -> Result<bool, OptimizeError> {
    let (copy, retired) = siblings(path);
    let failed = |what: &str, err: &dyn std::fmt::Display| {
        OptimizeError::Failed(StoreError::Operation(format!(
            "optimising {}: {what}: {err}",
            path.display()
        )))
    };
    let step = |s: OptimizeStep| {
        if stop(s) {
            slot.blocking_write().take();
            Err(OptimizeError::Stopped(s))
        } else {
            Ok(())
        }
    };
    let live = slot
        .blocking_read()
        .clone()
        .ok_or_else(|| failed("no shard", &"opened again?"))?;
    live.flush();
    drop(live);
    recover(path).map_err(|e| failed("cannot clear a previous attempt", &e))?;
    if let Err(err) = copy_tree(path, &copy) {
        let _ = fs::remove_dir_all(&copy);
        return Err(failed("cannot copy the shard (is the disk full?)", &err));
    }
    step(OptimizeStep::Copied)?;
    let optimized = EdgeShard::load(&copy, None).and_then(|optimized| {
        let changed = optimized.optimize()?;
        optimized.flush();
        Ok(changed)
    });
    let changed = match optimized {
        Ok(changed) => changed,
        Err(err) => {
            let _ = fs::remove_dir_all(&copy);
            return Err(failed("the engine failed", &err));
        }
    };
    step(OptimizeStep::Optimized)?;
    mark_complete(&copy).map_err(|e| failed("cannot mark the copy complete", &e))?;
    step(OptimizeStep::Marked)?;

    // The switch. The shard before must be closed first: closing flushes it, by path.
    let mut slot = slot.blocking_write();
    if let Some(mut old) = slot.take() {
        // Readers that took it before the lock finish their query first.
        loop {
            match Arc::try_unwrap(old) {
                Ok(shard) => break drop(shard),
                Err(shared) => {
                    old = shared;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
    let reopen = |slot: &mut Option<Arc<EdgeShard>>, what: &str, err: &dyn std::fmt::Display| {
        let message = format!("optimising {}: {what}: {err}", path.display());
        let restored = put_back(path);
        match restored.then(|| EdgeShard::load(path, None)) {
            Some(Ok(shard)) => {
                *slot = Some(Arc::new(shard));
                OptimizeError::Failed(StoreError::Operation(message))
            }
            _ => OptimizeError::Stranded(StoreError::Operation(format!(
                "{message}; the shard could not be put back: restart freshet (opening the store settles it)"
            ))),
        }
    };
    if let Err(err) = fs::rename(path, &retired).and_then(|_| sync_parent(path)) {
        return Err(reopen(&mut slot, "cannot move the shard aside", &err));
    }
    if stop(OptimizeStep::Retired) {
        return Err(OptimizeError::Stopped(OptimizeStep::Retired));
    }
    if let Err(err) = fs::rename(&copy, path).and_then(|_| sync_parent(path)) {
        return Err(reopen(
            &mut slot,
            "cannot move the optimised copy in place",
            &err,
        ));
    }
    if stop(OptimizeStep::Switched) {
        return Err(OptimizeError::Stopped(OptimizeStep::Switched));
    }
    match EdgeShard::load(path, None) {
        Ok(fresh) => *slot = Some(Arc::new(fresh)),
        Err(err) => return Err(reopen(&mut slot, "cannot load the optimised shard", &err)),
    }
    drop(slot);
    let _ = fs::remove_file(path.join(COMPLETE));
    if let Err(err) = fs::remove_dir_all(&retired) {
        tracing::warn!(path = %retired.display(), error = %err, "could not remove the shard an optimisation replaced; the next open removes it");
    }
    Ok(changed)
}

/// After the shard before was moved aside and the switch failed: it goes back in place,
/// and the copy is dropped. Whether the shard before is in place.
fn put_back(path: &Path) -> bool {
    let (copy, retired) = siblings(path);
    // The copy in place goes aside unmarked: were the process to die before the shard
    // before is back, the next open must bring that one back, not this one.
    let _ = fs::remove_file(path.join(COMPLETE));
    let restored = if retired.exists() {
        (!path.exists() || fs::rename(path, &copy).is_ok())
            && fs::rename(&retired, path).is_ok()
            && sync_parent(path).is_ok()
    } else {
        path.exists()
    };
    let _ = fs::remove_dir_all(&copy);
    restored
}

#[derive(Debug)]
pub enum OptimizeError {
    /// Stopped after this step (tests), as a crash would: nothing was cleaned up.
    Stopped(OptimizeStep),
    /// Nothing changed: the shard in use is the one before.
    Failed(StoreError),
    /// The shard in use was moved and could not be put back: no write may follow.
    Stranded(StoreError),
}

fn mark_complete(copy: &Path) -> io::Result<()> {
    let marker = copy.join(COMPLETE);
    File::create(&marker)?.sync_all()?;
    File::open(copy)?.sync_all()
}

/// Copies a directory tree, syncing every file, so the copy survives a power loss as
/// well as the original does.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
            File::open(&target)?.sync_all()?;
        }
    }
    File::open(to)?.sync_all()
}

/// Makes a rename in `path`'s directory durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}
