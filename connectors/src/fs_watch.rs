//! Follow mode for the folder source: OS file events, debounced per path, become partial
//! rescans of exactly the paths they name; anything the events cannot vouch for becomes a
//! full rescan.
//!
//! Invariant: nothing is missed silently. Every path an event names is rescanned once it
//! has been quiet for the debounce window, in a scan ending in `ScopeComplete` that covers
//! it; an event-queue overflow, a watcher error, an explicit request or the periodic
//! safety net ends in a full scan and `ScanComplete`; a scan that cannot finish ends in
//! `ScanAborted` and the watch is set up again. With a partition (`cx.partition`), every
//! scan, full or partial, reports only the partition's documents, and its marker vouches
//! for those only.
//!
//! Debouncing is by path only, never by interpreting event sequences: semantic debouncers
//! (notify-debouncer-full) fold "created, then removed" into nothing, which loses the
//! deletion of a file an editor had replaced through a rename. Rescanning the path asks
//! the file system what is true now instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Event, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::fs::{check_root, doc_key, FolderSource, ScopeFilter};
use crate::{Change, DocKey, SourceContext, SourceError};

/// More distinct paths than this in one batch are cheaper to rescan as a whole tree.
const MAX_SCOPES: usize = 10_000;
/// How often a follower whose last partial scan is still queued checks again.
const BUSY_RECHECK: Duration = Duration::from_millis(5);
/// Wait before setting the watch up again after the root vanished or the watcher failed.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// How a following folder source debounces and re-checks.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Events for a path are held until it has been quiet this long, so a burst of writes
    /// (or an editor's write-then-rename) becomes one change.
    pub debounce: Duration,
    /// A full rescan this often as a safety net (for file systems whose events are
    /// unreliable, such as network mounts); `None` turns it off.
    pub rescan_interval: Option<Duration>,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            rescan_interval: Some(Duration::from_secs(3600)),
        }
    }
}

/// Lets the owner of a following source ask it for a full rescan (for example on SIGHUP),
/// and lets tests and drills drop OS events the way an overflowing kernel queue does.
/// One control may serve several sources: each sees every request.
#[derive(Debug)]
pub struct WatchControl {
    rescans: tokio::sync::watch::Sender<u64>,
    drop_events: AtomicBool,
}

impl Default for WatchControl {
    fn default() -> Self {
        Self {
            rescans: tokio::sync::watch::Sender::new(0),
            drop_events: AtomicBool::new(false),
        }
    }
}

impl WatchControl {
    /// Asks every source following with this control for a full rescan, as an event-queue
    /// overflow would.
    pub fn request_rescan(&self) {
        self.rescans.send_modify(|generation| *generation += 1);
    }

    /// While set, OS events are discarded unseen: what a kernel whose queue overflowed
    /// does. Only a rescan then finds the changes (which is what drills check).
    pub fn drop_events(&self, drop: bool) {
        self.drop_events.store(drop, Ordering::SeqCst);
    }
}

/// What a batch of debounced events asks for.
#[derive(Debug, PartialEq)]
enum Rescan {
    Nothing,
    Full(&'static str),
    Paths(Vec<DocKey>),
}

/// Paths named by events and not yet rescanned, with when each was first and last named.
#[derive(Debug, Default)]
struct Pending {
    paths: HashMap<PathBuf, (Instant, Instant)>,
    full: Option<&'static str>,
}

impl Pending {
    fn add(&mut self, result: notify::Result<Event>, now: Instant) {
        let event = match result {
            Ok(event) => event,
            Err(err) => {
                warn!(error = %err, "file watcher error; rescanning everything");
                self.full = Some("watcher error");
                return;
            }
        };
        if event.need_rescan() {
            warn!("the OS dropped file events (queue overflow); rescanning everything");
            self.full = Some("event queue overflow");
            return;
        }
        if !matters(&event.kind) {
            return;
        }
        for path in event.paths {
            self.paths
                .entry(path)
                .and_modify(|(_, last)| *last = now)
                .or_insert((now, now));
        }
    }

    /// When the next path becomes due: quiet for `window`, or waiting for `max_wait`
    /// (a file written without pause is still indexed now and then).
    fn next_due(&self, window: Duration, max_wait: Duration) -> Option<Instant> {
        self.paths
            .values()
            .map(|(first, last)| (*last + window).min(*first + max_wait))
            .min()
    }

    /// Takes the paths due at `now`, with the time the oldest of them was first named.
    fn take_due(
        &mut self,
        now: Instant,
        window: Duration,
        max_wait: Duration,
    ) -> (Vec<PathBuf>, Option<Instant>) {
        let mut due = Vec::new();
        let mut oldest: Option<Instant> = None;
        self.paths.retain(|path, (first, last)| {
            if *last + window <= now || *first + max_wait <= now {
                oldest = Some(oldest.map_or(*first, |o| o.min(*first)));
                due.push(path.clone());
                false
            } else {
                true
            }
        });
        (due, oldest)
    }
}

/// Scan, then follow: set up the watch before the first scan so that nothing changing
/// during the scan is missed, then turn event batches into partial rescans.
pub(crate) async fn follow(
    source: Arc<FolderSource>,
    cx: SourceContext,
) -> Result<(), SourceError> {
    let settings = source.options().watch.clone();
    let control = source.options().control.clone().unwrap_or_default();
    let mut rescans = control.rescans.subscribe();
    loop {
        if cx.cancel.is_cancelled() {
            return Ok(());
        }
        let root = match check_root(source.id(), source.root()) {
            Ok(root) => root,
            Err(err) => {
                warn!(source = %source.id(), error = %err, "cannot watch; retrying");
                abort(&cx, err.to_string()).await?;
                if pause(&cx, RETRY_DELAY).await {
                    return Ok(());
                }
                continue;
            }
        };
        let (events_tx, mut events) = mpsc::unbounded_channel::<notify::Result<Event>>();
        let watcher = notify::recommended_watcher(move |result| {
            let _ = events_tx.send(result);
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(err) => {
                return Err(SourceError::ScanFailed {
                    source_id: source.id().to_string(),
                    reason: format!("cannot start the file watcher: {err}"),
                })
            }
        };
        if let Err(err) = watcher.watch(&root, RecursiveMode::Recursive) {
            let reason = watch_error_reason(&err);
            warn!(source = %source.id(), error = %reason, "cannot watch the tree; retrying");
            abort(&cx, reason).await?;
            if pause(&cx, RETRY_DELAY).await {
                return Ok(());
            }
            continue;
        }
        info!(source = %source.id(), root = %root.display(), "watching for changes");

        let mut pending = Rescan::Full("start");
        let mut waiting = Pending::default();
        let max_wait = settings.debounce * 10;
        let mut first_event = None;
        let mut next_safety_scan = settings.rescan_interval.map(|every| Instant::now() + every);
        loop {
            let outcome = match std::mem::replace(&mut pending, Rescan::Nothing) {
                Rescan::Nothing => Ok(()),
                Rescan::Full(why) => {
                    debug!(source = %source.id(), why, "full rescan");
                    let scanned = source.walk(root.clone(), None, cx.clone()).await;
                    match scanned {
                        Ok(()) => cx.send(Change::ScanComplete).await,
                        Err(err) => Err(err),
                    }
                }
                Rescan::Paths(keys) => {
                    let filter = Arc::new(ScopeFilter::new(keys));
                    debug!(source = %source.id(), scopes = ?filter.scopes(), "partial rescan");
                    let scanned = source
                        .walk(root.clone(), Some(filter.clone()), cx.clone())
                        .await;
                    match scanned {
                        Ok(()) => {
                            cx.send(Change::ScopeComplete {
                                scopes: filter.scopes(),
                                first_event: first_event.take(),
                            })
                            .await
                        }
                        Err(err) => Err(err),
                    }
                }
            };
            match outcome {
                Ok(()) => {}
                Err(SourceError::Cancelled) => return Ok(()),
                Err(err) => {
                    warn!(source = %source.id(), error = %err, "rescan failed");
                    abort(&cx, err.to_string()).await?;
                    if !root.is_dir() {
                        // The root went away: set the watch up again once it is back.
                        break;
                    }
                }
            }

            let safety_scan = async {
                match next_safety_scan {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Backpressure by rounds: while the previous partial scan still waits in the
            // channel, hold the next one back and let due paths accumulate, so a busy
            // pipeline gets fewer, larger rounds instead of a growing queue of small ones.
            let pipeline_busy = cx.changes.capacity() < cx.changes.max_capacity();
            let due = waiting.next_due(settings.debounce, max_wait).map(|due| {
                if pipeline_busy {
                    due.max(Instant::now() + BUSY_RECHECK)
                } else {
                    due
                }
            });
            let debounced = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cx.cancel.cancelled() => return Ok(()),
                _ = rescans.changed() => pending = Rescan::Full("requested"),
                _ = safety_scan => {
                    pending = Rescan::Full("periodic safety net");
                    next_safety_scan = settings.rescan_interval.map(|every| Instant::now() + every);
                }
                result = events.recv() => {
                    let Some(result) = result else { break };
                    let now = Instant::now();
                    let drop = control.drop_events.load(Ordering::SeqCst);
                    for result in std::iter::once(result).chain(std::iter::from_fn(|| events.try_recv().ok())) {
                        if !drop {
                            waiting.add(result, now);
                        }
                    }
                    if let Some(why) = waiting.full.take() {
                        waiting.paths.clear();
                        pending = Rescan::Full(why);
                    }
                }
                _ = debounced => {
                    if cx.changes.capacity() < cx.changes.max_capacity() {
                        continue;
                    }
                    let (paths, oldest) = waiting.take_due(Instant::now(), settings.debounce, max_wait);
                    first_event = oldest;
                    pending = rescan_for(&root, &paths, source.options().include_hidden);
                }
            }
        }
        drop(watcher);
        if pause(&cx, RETRY_DELAY).await {
            return Ok(());
        }
    }
}

/// Reports a scan that could not finish; errors only when the run is over.
async fn abort(cx: &SourceContext, reason: String) -> Result<(), SourceError> {
    match cx.send(Change::ScanAborted { reason }).await {
        Ok(()) => Ok(()),
        Err(SourceError::Cancelled) if cx.cancel.is_cancelled() => Ok(()),
        Err(err) => Err(err),
    }
}

/// Sleeps unless cancelled first; returns whether the run was cancelled.
async fn pause(cx: &SourceContext, delay: Duration) -> bool {
    tokio::select! {
        _ = cx.cancel.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

fn watch_error_reason(err: &notify::Error) -> String {
    match err.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            "{err}: the OS limit on watched directories was reached; raise it (sysctl fs.inotify.max_user_watches) or exclude large directories"
        ),
        _ => format!("cannot watch the tree: {err}"),
    }
}

/// What a batch of quiet paths needs rescanned.
fn rescan_for(root: &Path, paths: &[PathBuf], include_hidden: bool) -> Rescan {
    let mut keys = Vec::new();
    for path in paths {
        match scope_for(root, path, include_hidden) {
            Some(Scope::Everything) => return Rescan::Full("root changed"),
            Some(Scope::Key(key)) => keys.push(key),
            None => {}
        }
    }
    if keys.is_empty() {
        Rescan::Nothing
    } else if keys.len() > MAX_SCOPES {
        Rescan::Full("too many changed paths")
    } else {
        keys.sort();
        Rescan::Paths(keys)
    }
}

/// Reads (our own included) change nothing; a close after writing does.
fn matters(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

enum Scope {
    Everything,
    Key(DocKey),
}

/// The part of the tree an event at `path` may have changed.
fn scope_for(root: &Path, path: &Path, include_hidden: bool) -> Option<Scope> {
    if path == root {
        return Some(Scope::Everything);
    }
    let key = doc_key(root, path)?;
    let name = key.rsplit('/').next().unwrap_or(&key);
    if name == ".gitignore" || name == ".ignore" {
        // Ignore rules changed: everything they govern may have appeared or vanished.
        return Some(match key.rsplit_once('/') {
            Some((dir, _)) => Scope::Key(dir.to_string()),
            None => Scope::Everything,
        });
    }
    if !include_hidden && key.split('/').any(|part| part.starts_with('.')) {
        // Editors' swap and temp files: the walk never reports them.
        return None;
    }
    Some(Scope::Key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, Flag, ModifyKind, RemoveKind};

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn events_become_scopes_and_reads_are_ignored() {
        let root = Path::new("/r");
        let mut pending = Pending::default();
        let t0 = Instant::now();
        pending.add(event(EventKind::Create(CreateKind::File), "/r/a/x.md"), t0);
        pending.add(
            event(
                EventKind::Access(AccessKind::Open(AccessMode::Read)),
                "/r/b.md",
            ),
            t0,
        );
        pending.add(
            event(EventKind::Modify(ModifyKind::Any), "/r/.x.md.swp"),
            t0,
        );
        pending.add(event(EventKind::Remove(RemoveKind::Any), "/r/old"), t0);
        let window = Duration::from_millis(100);
        let (paths, oldest) = pending.take_due(t0 + window, window, window * 10);
        assert_eq!(oldest, Some(t0));
        assert_eq!(
            rescan_for(root, &paths, false),
            Rescan::Paths(vec!["a/x.md".into(), "old".into()])
        );
    }

    #[test]
    fn a_path_is_due_once_quiet_or_after_the_longest_wait() {
        let mut pending = Pending::default();
        let t0 = Instant::now();
        let window = Duration::from_millis(100);
        let max_wait = window * 10;
        pending.add(event(EventKind::Modify(ModifyKind::Any), "/r/busy.log"), t0);
        assert_eq!(pending.next_due(window, max_wait), Some(t0 + window));
        // Written again and again: not due while it keeps changing...
        for i in 1..20 {
            let at = t0 + window / 2 * i;
            pending.add(event(EventKind::Modify(ModifyKind::Any), "/r/busy.log"), at);
            assert!(pending.take_due(at, window, max_wait).0.is_empty());
        }
        // ...until the longest wait is over.
        assert_eq!(pending.next_due(window, max_wait), Some(t0 + max_wait));
        let (due, _) = pending.take_due(t0 + max_wait, window, max_wait);
        assert_eq!(due, [PathBuf::from("/r/busy.log")]);
    }

    #[test]
    fn ignore_rules_rescan_their_directory_and_overflow_rescans_everything() {
        let root = Path::new("/r");
        assert_eq!(
            rescan_for(root, &[PathBuf::from("/r/docs/.gitignore")], false),
            Rescan::Paths(vec!["docs".into()])
        );
        let mut pending = Pending::default();
        pending.add(
            Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)),
            Instant::now(),
        );
        assert_eq!(pending.full, Some("event queue overflow"));
        let mut pending = Pending::default();
        pending.add(Err(notify::Error::generic("boom")), Instant::now());
        assert_eq!(pending.full, Some("watcher error"));
    }
}
