//! The folder source: walks a directory tree (honouring .gitignore and include/exclude
//! globs) and reports each regular file with a cheap version hint; in follow mode it
//! rescans what the OS reports as changed (see `fs_watch`).
//!
//! Invariant: symlinks are never followed (so nothing outside the root is read and no file
//! is indexed twice through a link), and a completion marker is sent only when the walk
//! visited every directory it covers without error. A partial walk applies exactly the
//! same rules as a full one, so watching and scanning agree on what exists.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::WalkBuilder;
use tracing::{debug, warn};

use crate::fs_watch::{WatchControl, WatchSettings};
use crate::{Change, DocContent, DocKey, RawDoc, Source, SourceContext, SourceError};

/// What to walk and what to leave out.
#[derive(Debug, Clone, Default)]
pub struct FolderSourceOptions {
    /// Globs over the document key (path relative to the root); empty means every file.
    pub include: Vec<String>,
    /// Globs over the document key; a match is never indexed.
    pub exclude: Vec<String>,
    /// Honour .gitignore, .ignore and .git/info/exclude files (also outside a git repo).
    pub respect_gitignore: bool,
    /// Also walk hidden files and directories (names starting with `.`).
    pub include_hidden: bool,
    /// How follow mode debounces and re-checks.
    pub watch: WatchSettings,
    /// Lets the owner ask a following source for a full rescan.
    pub control: Option<Arc<WatchControl>>,
}

pub struct FolderSource {
    id: String,
    root: PathBuf,
    include: Option<GlobSet>,
    exclude: GlobSet,
    options: FolderSourceOptions,
}

impl std::fmt::Debug for FolderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderSource")
            .field("id", &self.id)
            .field("root", &self.root)
            .field("options", &self.options)
            .finish()
    }
}

impl FolderSource {
    pub fn new(
        id: impl Into<String>,
        root: impl Into<PathBuf>,
        options: FolderSourceOptions,
    ) -> Result<Self, SourceError> {
        let id = id.into();
        let build = |globs: &[String]| -> Result<GlobSet, SourceError> {
            let mut set = GlobSetBuilder::new();
            for glob in globs {
                set.add(Glob::new(glob).map_err(|err| SourceError::Config {
                    source_id: id.clone(),
                    reason: format!("bad glob `{glob}`: {err}"),
                })?);
            }
            set.build().map_err(|err| SourceError::Config {
                source_id: id.clone(),
                reason: err.to_string(),
            })
        };
        let include = if options.include.is_empty() {
            None
        } else {
            Some(build(&options.include)?)
        };
        let exclude = build(&options.exclude)?;
        Ok(Self {
            root: root.into(),
            include,
            exclude,
            options,
            id,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn options(&self) -> &FolderSourceOptions {
        &self.options
    }

    fn wanted(&self, key: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(key)) && !self.exclude.is_match(key)
    }

    /// The walk itself, on a blocking thread: sends every wanted regular file under
    /// `scopes` (everything when `None`) whose key lies in `cx.partition` (if any).
    /// Errors when part of the tree could not be read.
    pub(crate) fn walk_blocking(
        &self,
        root: &Path,
        scopes: Option<Arc<ScopeFilter>>,
        cx: &SourceContext,
    ) -> Result<(), SourceError> {
        let mut walker = WalkBuilder::new(root);
        if let Some(scopes) = scopes {
            let root = root.to_path_buf();
            walker.filter_entry(move |entry| scopes.admits(&root, entry.path()));
        }
        walker
            .follow_links(false)
            .hidden(!self.options.include_hidden)
            .git_ignore(self.options.respect_gitignore)
            .git_global(false)
            .git_exclude(self.options.respect_gitignore)
            .ignore(self.options.respect_gitignore)
            .parents(self.options.respect_gitignore)
            .require_git(false)
            .sort_by_file_name(|a, b| a.cmp(b));

        let mut walk_errors = Vec::new();
        for entry in walker.build() {
            if cx.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    warn!(source = %self.id, error = %err, "could not walk part of the tree");
                    walk_errors.push(err.to_string());
                    continue;
                }
            };
            let Some(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                continue;
            }
            let Some(key) = doc_key(root, entry.path()) else {
                warn!(source = %self.id, path = %entry.path().display(), "skipping a path that is not valid UTF-8");
                continue;
            };
            // Another partition's document: skipped before any stat or read.
            if !self.wanted(&key) || !cx.wants(&key) {
                continue;
            }
            if file_type.is_symlink() {
                debug!(source = %self.id, key = %key, "not following symlink");
                continue;
            }
            if !file_type.is_file() {
                warn!(source = %self.id, key = %key, "skipping a special file (fifo, socket or device)");
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) if is_not_found(&err) => continue,
                Err(err) => {
                    // Still report it, so the pipeline records a readable failure for it.
                    warn!(source = %self.id, key = %key, error = %err, "cannot stat file");
                    let doc = RawDoc {
                        key,
                        version: "unstat-able".into(),
                        size: None,
                        content: DocContent::File(entry.path().to_path_buf()),
                        media: None,
                        metadata: Default::default(),
                    };
                    send_blocking(cx, Change::Upsert(doc))?;
                    continue;
                }
            };
            let doc = RawDoc {
                key,
                version: version_hint(&meta),
                size: Some(meta.len()),
                content: DocContent::File(entry.path().to_path_buf()),
                media: None,
                metadata: Default::default(),
            };
            send_blocking(cx, Change::Upsert(doc))?;
        }

        if walk_errors.is_empty() {
            Ok(())
        } else {
            Err(SourceError::ScanFailed {
                source_id: self.id.clone(),
                reason: format!(
                    "{} part(s) of the tree could not be read (first: {}); deletions are not applied until a scan completes",
                    walk_errors.len(),
                    walk_errors[0]
                ),
            })
        }
    }
}

#[async_trait]
impl Source for FolderSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), SourceError> {
        let this: Arc<Self> = Arc::from(self);
        if cx.follow {
            return crate::fs_watch::follow(this, cx).await;
        }
        let root = check_root(&this.id, &this.root)?;
        this.walk(root, None, cx.clone()).await?;
        cx.send(Change::ScanComplete).await
    }
}

impl FolderSource {
    /// Walks (all of the tree, or `scopes`) on the blocking pool.
    pub(crate) async fn walk(
        self: &Arc<Self>,
        root: PathBuf,
        scopes: Option<Arc<ScopeFilter>>,
        cx: SourceContext,
    ) -> Result<(), SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.walk_blocking(&root, scopes, &cx))
            .await
            .map_err(|err| SourceError::ScanFailed {
                source_id: self.id.clone(),
                reason: format!("scan task failed: {err}"),
            })?
    }
}

/// The parts of a tree a partial walk covers: each scope is a key (a file or a directory
/// relative to the root), covering itself and everything below it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScopeFilter {
    scopes: BTreeSet<DocKey>,
    /// Directories the walk must enter to reach a scope.
    ancestors: HashSet<DocKey>,
}

impl ScopeFilter {
    /// The smallest set of scopes covering `keys` (a key below another is dropped).
    pub(crate) fn new(keys: impl IntoIterator<Item = DocKey>) -> Self {
        let sorted: BTreeSet<DocKey> = keys.into_iter().collect();
        let mut scopes = BTreeSet::new();
        let mut ancestors = HashSet::new();
        for key in sorted {
            if key_ancestors(&key).any(|a| scopes.contains(a)) {
                continue;
            }
            ancestors.extend(key_ancestors(&key).map(str::to_string));
            scopes.insert(key);
        }
        Self { scopes, ancestors }
    }

    pub(crate) fn scopes(&self) -> Vec<DocKey> {
        self.scopes.iter().cloned().collect()
    }

    fn admits(&self, root: &Path, path: &Path) -> bool {
        let Some(key) = doc_key(root, path) else {
            // The root itself, or a name that is not UTF-8 (the walk reports those).
            return true;
        };
        self.ancestors.contains(&key)
            || self.scopes.contains(&key)
            || key_ancestors(&key).any(|a| self.scopes.contains(a))
    }
}

/// `a/b/c.md` -> `a/b`, `a` (nearest first).
fn key_ancestors(key: &str) -> impl Iterator<Item = &str> {
    let mut rest = key;
    std::iter::from_fn(move || {
        let (parent, _) = rest.rsplit_once('/')?;
        rest = parent;
        Some(parent)
    })
}

/// A missing, unreadable or non-directory root is an error, never "the folder is empty":
/// treating it as empty would delete the whole index.
pub(crate) fn check_root(source_id: &str, root: &Path) -> Result<PathBuf, SourceError> {
    let unavailable = |reason: String| SourceError::RootUnavailable {
        source_id: source_id.to_string(),
        path: root.to_path_buf(),
        reason,
    };
    let canonical = root
        .canonicalize()
        .map_err(|err| unavailable(err.to_string()))?;
    let meta = std::fs::metadata(&canonical).map_err(|err| unavailable(err.to_string()))?;
    if !meta.is_dir() {
        return Err(unavailable("not a directory".into()));
    }
    std::fs::read_dir(&canonical).map_err(|err| unavailable(err.to_string()))?;
    Ok(canonical)
}

fn send_blocking(cx: &SourceContext, change: Change) -> Result<(), SourceError> {
    cx.changes
        .blocking_send(change)
        .map_err(|_| SourceError::Cancelled)
}

fn is_not_found(err: &ignore::Error) -> bool {
    err.io_error()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
}

/// The document key: the path relative to the root with `/` separators.
pub fn doc_key(root: &Path, path: &Path) -> Option<DocKey> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect();
    let key = parts?.join("/");
    (!key.is_empty()).then_some(key)
}

/// A file changed this recently may change again within the file system's timestamp
/// granularity without its hint changing. Linux stamps files from a clock that ticks
/// every 1 to 10 ms; file systems that keep whole seconds (their nanoseconds are zero)
/// get a window of two seconds.
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);
const RACY_WINDOW_COARSE: std::time::Duration = std::time::Duration::from_secs(2);

/// mtime and size are what users expect; ctime and inode catch what they miss: tools that
/// restore an old mtime (`cp -p`, `rsync -t`, archive extraction) still bump ctime, and an
/// editor's atomic save replaces the inode.
///
/// Timestamps are coarse: two same-size writes within one clock tick leave the same hint.
/// So, as git does with "racily clean" entries, a hint taken while the file is still
/// fresh is made unique and never matches a stored one: such a file is read and hashed
/// (cheap; unchanged content is not re-embedded) until it has been quiet for a while.
pub fn version_hint(meta: &std::fs::Metadata) -> String {
    let hint = format!(
        "m{}.{:09}-c{}.{:09}-s{}-i{}",
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.len(),
        meta.ino()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let changed = std::time::Duration::new(
        meta.ctime().max(meta.mtime()).max(0) as u64,
        if meta.ctime() >= meta.mtime() {
            meta.ctime_nsec()
        } else {
            meta.mtime_nsec()
        } as u32,
    );
    let window = if meta.mtime_nsec() == 0 && meta.ctime_nsec() == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW
    };
    if now.saturating_sub(changed) < window || changed > now {
        format!("{hint}-racy{}", now.as_nanos())
    } else {
        hint
    }
}

/// Why a document's bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the file vanished before it could be read (deleted or moved during the scan)")]
    Vanished,
    #[error("the file cannot be read: {0}; fix its permissions or exclude it")]
    Unreadable(std::io::Error),
    #[error("the file is {size} bytes, over the limit of {limit} bytes; raise `max_document_bytes` or exclude it")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a regular file")]
    NotRegular,
}

impl DocContent {
    /// Reads the bytes, refusing anything over `limit` without reading all of it.
    pub fn read(&self, limit: u64) -> Result<Vec<u8>, ReadError> {
        match self {
            DocContent::Inline(bytes) => {
                if bytes.len() as u64 > limit {
                    return Err(ReadError::TooLarge {
                        size: bytes.len() as u64,
                        limit,
                    });
                }
                Ok(bytes.clone())
            }
            DocContent::File(path) => read_file(path, limit),
        }
    }
}

fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let map_err = |err: std::io::Error| match err.kind() {
        std::io::ErrorKind::NotFound => ReadError::Vanished,
        _ => ReadError::Unreadable(err),
    };
    let meta = std::fs::symlink_metadata(path).map_err(map_err)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let file = std::fs::File::open(path).map_err(map_err)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Read one byte past the limit to notice a file that grew since it was listed.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(map_err)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// The content hash every source's documents are compared by.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_key_is_relative_with_forward_slashes() {
        let root = Path::new("/data/docs");
        assert_eq!(
            doc_key(root, Path::new("/data/docs/a/b.md")).as_deref(),
            Some("a/b.md")
        );
        assert_eq!(doc_key(root, Path::new("/data/docs")), None);
        assert_eq!(doc_key(root, Path::new("/elsewhere/x.md")), None);
    }

    #[test]
    fn include_and_exclude_globs_apply_to_keys() {
        let source = FolderSource::new(
            "t",
            "/tmp",
            FolderSourceOptions {
                include: vec!["**/*.md".into(), "*.md".into()],
                exclude: vec!["drafts/**".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(source.wanted("a.md"));
        assert!(source.wanted("x/y/a.md"));
        assert!(!source.wanted("a.txt"));
        assert!(!source.wanted("drafts/a.md"));
    }

    #[test]
    fn scope_filters_keep_the_outermost_scopes_and_the_way_to_them() {
        let filter = ScopeFilter::new(["a/b/c.md".into(), "a/b".into(), "d.md".into()]);
        assert_eq!(filter.scopes(), ["a/b", "d.md"]);
        let root = Path::new("/r");
        assert!(filter.admits(root, Path::new("/r")));
        assert!(filter.admits(root, Path::new("/r/a")));
        assert!(filter.admits(root, Path::new("/r/a/b")));
        assert!(filter.admits(root, Path::new("/r/a/b/x/y.md")));
        assert!(filter.admits(root, Path::new("/r/d.md")));
        assert!(!filter.admits(root, Path::new("/r/a/c")));
        assert!(!filter.admits(root, Path::new("/r/e.md")));
    }

    #[tokio::test]
    async fn a_partial_walk_reports_only_its_scopes_with_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for rel in ["a/x.md", "a/y.log", "b/z.md", "c.md"] {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "text").unwrap();
        }
        std::fs::write(root.join(".gitignore"), "*.log\n").unwrap();
        let source = Arc::new(
            FolderSource::new(
                "t",
                &root,
                FolderSourceOptions {
                    respect_gitignore: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let cx = SourceContext {
            changes: tx,
            cancel: Default::default(),
            follow: false,
            cursor: Default::default(),
            partition: None,
        };
        let scopes = ScopeFilter::new(["a".into(), "c.md".into(), "gone.md".into()]);
        source.walk(root, Some(Arc::new(scopes)), cx).await.unwrap();
        let mut keys = Vec::new();
        while let Some(Change::Upsert(doc)) = rx.recv().await {
            keys.push(doc.key);
        }
        assert_eq!(keys, ["a/x.md", "c.md"]);
    }

    /// 50 files in nested directories, some with spaces, `%` and non-ASCII names.
    fn partition_tree() -> (tempfile::TempDir, PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut keys = Vec::new();
        for n in 0..50 {
            let key = match n % 5 {
                0 => format!("doc-{n}.md"),
                1 => format!("a/notes {n}.txt"),
                2 => format!("a/b/{n}%.md"),
                3 => format!("été/日本-{n}.md"),
                _ => format!("c/d/e/f{n}.md"),
            };
            let path = root.join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("text {n}")).unwrap();
            keys.push(key);
        }
        keys.sort();
        (dir, root, keys)
    }

    #[tokio::test]
    async fn partitions_of_a_folder_are_disjoint_and_cover_every_file() {
        let (_dir, root, keys) = partition_tree();
        let all = crate::testing::scan(folder(&root)).await.unwrap();
        assert_eq!(all.keys().cloned().collect::<Vec<_>>(), keys);
        let mut union = BTreeSet::new();
        for index in 0..3 {
            let partition = crate::Partition::new(index, 3);
            // (`scan_partition` also checks every key lies in the partition.)
            let part = crate::testing::scan_partition(folder(&root), partition)
                .await
                .unwrap();
            assert!(!part.is_empty() && part.len() < keys.len(), "{part:?}");
            for key in part.keys() {
                assert!(partition.contains(key), "{key} not in {partition}");
                assert!(union.insert(key.clone()), "{key} in two partitions");
            }
        }
        assert_eq!(union.into_iter().collect::<Vec<_>>(), keys);
    }

    #[tokio::test]
    async fn a_partial_walk_of_a_partition_reports_only_its_keys_in_scope() {
        let (_dir, root, keys) = partition_tree();
        let source = Arc::new(FolderSource::new("t", &root, Default::default()).unwrap());
        let partition = crate::Partition::new(1, 3);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let cx = SourceContext {
            changes: tx,
            cancel: Default::default(),
            follow: false,
            cursor: Default::default(),
            partition: Some(partition),
        };
        let scopes = ScopeFilter::new(["a".into(), "été".into(), "doc-0.md".into()]);
        source.walk(root, Some(Arc::new(scopes)), cx).await.unwrap();
        let mut reported = Vec::new();
        while let Some(change) = rx.recv().await {
            match change {
                Change::Upsert(doc) => reported.push(doc.key),
                other => panic!("a walk sent {other:?}"),
            }
        }
        reported.sort();
        let in_scope: Vec<&String> = keys
            .iter()
            .filter(|k| {
                ["a", "été", "doc-0.md"]
                    .iter()
                    .any(|s| crate::in_scope(s, k))
            })
            .collect();
        let expected: Vec<&String> = in_scope
            .iter()
            .copied()
            .filter(|k| partition.contains(k))
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < in_scope.len(),
            "the fixture should put some keys in scope on each side: {expected:?}"
        );
        assert_eq!(reported.iter().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn bad_glob_is_a_config_error_naming_the_glob() {
        let err = FolderSource::new(
            "t",
            "/tmp",
            FolderSourceOptions {
                include: vec!["a/[".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("a/["), "{err}");
    }

    fn folder(root: &Path) -> Box<dyn Source> {
        Box::new(
            FolderSource::new(
                "t",
                root,
                FolderSourceOptions {
                    respect_gitignore: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn walk_honours_gitignore_hidden_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("a.md", "# A");
        write("sub/deeper/b.txt", "b");
        write("build.log", "ignored by .gitignore");
        write("drafts/x.md", "ignored by .gitignore too");
        write(".gitignore", "*.log\ndrafts/\n");
        write(".hidden/c.md", "hidden");
        std::fs::write(dir.path().join("outside.md"), "outside the root").unwrap();
        std::os::unix::fs::symlink(root.join("a.md"), root.join("link-to-a.md")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.md"), root.join("escape.md")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("loop")).unwrap();
        // Hints of files changed within the last clock tick are unique on purpose.
        std::thread::sleep(RACY_WINDOW);

        let docs = crate::testing::check_stable(|| folder(&root)).await;
        let keys: Vec<&str> = docs.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a.md", "sub/deeper/b.txt"]);
    }

    #[test]
    fn hints_of_freshly_changed_files_never_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.md");
        std::fs::write(&path, "one").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // Just written: each look gives a hint of its own, so nothing trusts it.
        assert_ne!(version_hint(&meta), version_hint(&meta));
        assert!(version_hint(&meta).contains("-racy"));
        // Quiet for longer than a clock tick: the hint is stable.
        std::thread::sleep(RACY_WINDOW + std::time::Duration::from_millis(50));
        assert_eq!(version_hint(&meta), version_hint(&meta));
        assert!(!version_hint(&meta).contains("-racy"));
    }

    #[tokio::test]
    async fn version_hint_changes_with_content_and_atomic_saves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.md"), "one").unwrap();
        let before = crate::testing::scan(folder(dir.path())).await.unwrap();
        // Same size, new content, written through a temp file and a rename (editors do).
        std::fs::write(dir.path().join(".a.md.swp"), "two").unwrap();
        std::fs::rename(dir.path().join(".a.md.swp"), dir.path().join("a.md")).unwrap();
        let after = crate::testing::scan(folder(dir.path())).await.unwrap();
        assert_ne!(before["a.md"], after["a.md"]);
    }

    #[tokio::test]
    async fn a_missing_root_is_an_error_not_an_empty_scan() {
        let dir = tempfile::tempdir().unwrap();
        let err = crate::testing::scan(folder(&dir.path().join("gone")))
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::RootUnavailable { .. }), "{err}");
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let err = crate::testing::scan(folder(&dir.path().join("file")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn read_refuses_oversize_and_reports_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        std::fs::write(&path, b"hello world").unwrap();
        let content = DocContent::File(path.clone());
        assert_eq!(content.read(100).unwrap(), b"hello world");
        assert!(matches!(
            content.read(5),
            Err(ReadError::TooLarge { size: 11, limit: 5 })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(content.read(100), Err(ReadError::Vanished)));
    }
}
