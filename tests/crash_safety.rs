//! Crash safety: whatever step of a batch a sync dies at, the next sync converges to
//! exactly the index a clean run builds: same point ids, same payloads, no orphans, nothing
//! missing. In-process faults at every commit step, then kill -9 of the real binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{copy_dir, crash_at, points, store_toml, StoreKind, Workspace};
use freshet::pipeline::{CommitStep, SyncOptions};

type Mutation = fn(&Path);

fn shrink_and_add(corpus: &Path) {
    std::fs::write(
        corpus.join("guides/bike-maintenance.md"),
        "# Bicycle maintenance\n\nPump the tyres every week.\n",
    )
    .unwrap();
    std::fs::write(
        corpus.join("new-note.md"),
        "# New\n\nA note about harbour ferries.\n",
    )
    .unwrap();
}

fn delete_one(corpus: &Path) {
    std::fs::remove_file(corpus.join("returns-policy.txt")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_commit_step_is_repaired_by_the_next_sync() {
    crash_at_every_step(StoreKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_commit_step_is_repaired_by_the_next_sync_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("crash at every commit step") {
        crash_at_every_step(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_commit_step_is_repaired_by_the_next_sync_on_qdrant() {
    if let Some(kind) = StoreKind::qdrant("crash at every commit step") {
        crash_at_every_step(kind).await;
    }
}

async fn crash_at_every_step(kind: StoreKind) {
    let steps = [
        CommitStep::AfterIntent,
        CommitStep::AfterUpsert,
        CommitStep::AfterStaleDelete,
        CommitStep::AfterCommit,
    ];
    let mutations: [(&str, Mutation); 3] = [
        ("first sync", |_| {}),
        ("shrink one file, add one", shrink_and_add),
        ("delete one file", delete_one),
    ];
    for (name, mutate) in mutations {
        for step in steps {
            if name == "delete one file" && step == CommitStep::AfterUpsert {
                continue; // a deletion writes no points
            }
            let ws = Workspace::with_sample_corpus_on(kind);
            // Small chunks, so documents have several points and shrinking leaves stale ones.
            let mut config = ws.config();
            config.chunking.max_tokens = 48;
            config.chunking.overlap_tokens = 0;
            let index = ws.open_with(config.clone()).await;
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

            let index = ws.open_with(config.clone()).await;
            let resumed = index.sync(&SyncOptions::default()).await.unwrap();
            assert!(resumed.error.is_none(), "{name} / {step:?}: {resumed:#?}");
            let verify = index.verify().await.unwrap();
            assert!(verify.is_clean(), "{name} / {step:?}: {verify:#?}");
            assert_eq!(verify.pending_documents, 0);

            let clean = {
                let other = Workspace::empty_on(kind);
                copy_dir(&ws.corpus(), &other.corpus());
                let index = other
                    .open_with(Workspace::config_for(&other, &config))
                    .await;
                index.sync(&SyncOptions::default()).await.unwrap();
                points(&index).await
            };
            let got = points(&index).await;
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                clean.keys().collect::<Vec<_>>(),
                "{name} / {step:?}: point ids differ from a clean run"
            );
            assert_eq!(
                got, clean,
                "{name} / {step:?}: payloads differ from a clean run"
            );
        }
    }
}

/// Writes `n` small documents with a deterministic generator.
fn write_corpus(dir: &Path, n: usize, seed: u64) {
    let words = [
        "river", "harbour", "engine", "garden", "ledger", "vector", "signal", "forest", "battery",
        "bridge", "market", "planet", "recipe", "server", "weather", "archive",
    ];
    let mut state = seed;
    let mut next = |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m as u64) as usize
    };
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let mut text = format!("# Note {i}\n\n");
        for _ in 0..(2 + next(3)) {
            let sentence: Vec<&str> = (0..(8 + next(10)))
                .map(|_| words[next(words.len())])
                .collect();
            text.push_str(&sentence.join(" "));
            text.push_str(".\n\n");
        }
        std::fs::write(sub.join(format!("note{i:04}.md")), text).unwrap();
    }
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A config naming the source `notes`, so point ids match across workspaces.
fn write_config(ws: &Workspace) -> PathBuf {
    let path = ws.dir.path().join("freshet.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[[sources]]\ntype = \"folder\"\nid = \"notes\"\npath = \"corpus\"\n\n{}",
            store_toml(&ws.store)
        ),
    )
    .unwrap();
    path
}

fn freshet(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freshet"));
    command.args(args).arg("--config").arg(config);
    command
}

/// Every point as `id -> payload` (without the per-run timestamp), checking ids are unique.
fn export(config: &Path) -> BTreeMap<String, serde_json::Value> {
    let out = freshet(config, &["export"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut points = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut point: serde_json::Value = serde_json::from_str(line).unwrap();
        point["payload"]
            .as_object_mut()
            .unwrap()
            .remove("indexed_at");
        let id = point["id"].as_str().unwrap().to_string();
        assert!(
            points.insert(id.clone(), point["payload"].take()).is_none(),
            "duplicate point {id}"
        );
    }
    points
}

/// kill -9 of the real binary at varied moments, many times, with the corpus changing in
/// between; the final index equals a clean run's: same point ids, same payloads.
#[test]
fn kill_minus_nine_many_times_then_resume_equals_a_clean_run() {
    kill_minus_nine(StoreKind::Embedded, 24);
}

#[test]
fn kill_minus_nine_many_times_then_resume_equals_a_clean_run_on_pgvector() {
    if let Some(kind) = StoreKind::pgvector("kill -9 of the binary") {
        kill_minus_nine(kind, 16);
    }
}

#[test]
fn kill_minus_nine_many_times_then_resume_equals_a_clean_run_on_qdrant() {
    if let Some(kind) = StoreKind::qdrant("kill -9 of the binary") {
        kill_minus_nine(kind, 16);
    }
}

fn kill_minus_nine(kind: StoreKind, default_rounds: usize) {
    let kills: usize = std::env::var("FRESHET_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rounds);
    let seed: u64 = 0x5eed_f00d;
    let ws = Workspace::empty_on(kind);
    write_corpus(&ws.corpus(), 300, seed);
    let config = write_config(&ws);
    let sync = || {
        freshet(&config, &["sync", "--allow-mass-delete"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut state = seed;
    let mut next = |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    let (mut killed, mut finished) = (0, 0);
    for round in 0..kills {
        let mut child = sync();
        std::thread::sleep(Duration::from_millis(100 + next(1400)));
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
            }
        }
        // Change the corpus before every resumed run, so each has real work to be killed
        // in, and the runs also update, delete and add.
        let files = all_files(&ws.corpus());
        for _ in 0..60 {
            let f = &files[next(files.len() as u64) as usize];
            if f.exists() {
                let body = format!(
                    "harbour ferries cross the river {} times a day. ",
                    next(1000)
                )
                .repeat(12);
                std::fs::write(f, format!("# Edited in round {round}\n\n{body}\n")).unwrap();
            }
        }
        if round % 4 == 3 {
            let _ = std::fs::remove_file(&files[next(files.len() as u64) as usize]);
            let added = ws.corpus().join(format!("d0/added-{round}.md"));
            std::fs::write(added, format!("# Added {round}\n\nnew garden notes\n")).unwrap();
        }
    }
    assert!(
        killed >= kills / 2,
        "only {killed} of {kills} runs were killed mid-way ({finished} finished)"
    );

    let status = sync().wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let resumed = export(&config);

    let clean = Workspace::empty_on(kind);
    copy_dir(&ws.corpus(), &clean.corpus());
    let clean_config = write_config(&clean);
    let status = freshet(&clean_config, &["sync"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let expected = export(&clean_config);

    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "point ids differ from a clean run"
    );
    assert_eq!(resumed, expected, "payloads differ from a clean run");

    let verify = freshet(&config, &["verify", "--json"]).output().unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    eprintln!(
        "kill -9 rounds ({kind:?}): {killed} killed mid-way, {finished} finished on their own"
    );
}

/// The cases a ledger without intent records gets wrong: the store is ahead of the ledger
/// after the crash, and the source moves back before the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_then_the_source_moving_back_leaves_no_orphans_or_stale_text() {
    // A new file is written to the store, the run dies, the file is deleted.
    let ws = Workspace::with_sample_corpus();
    let index = ws.open().await;
    index.sync(&SyncOptions::default()).await.unwrap();
    let before = points(&index).await;
    std::fs::write(
        ws.corpus().join("brief.md"),
        "# Brief\n\nHere for one crashed run.\n",
    )
    .unwrap();
    let crashed = index.sync(&crash_at(CommitStep::AfterUpsert)).await;
    assert!(matches!(crashed, Err(freshet::Error::Injected(_))));
    std::fs::remove_file(ws.corpus().join("brief.md")).unwrap();
    index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(
        points(&index).await,
        before,
        "the crashed write left orphans"
    );
    assert!(index.verify().await.unwrap().is_clean());

    // A file is edited, the new text reaches the store, the run dies, the edit is undone.
    let path = ws.corpus().join("returns-policy.txt");
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, "Everything is final sale now.").unwrap();
    let crashed = index.sync(&crash_at(CommitStep::AfterStaleDelete)).await;
    assert!(matches!(crashed, Err(freshet::Error::Injected(_))));
    std::fs::write(&path, &original).unwrap();
    index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(
        points(&index).await,
        before,
        "the store kept the undone edit"
    );
    assert!(index.verify().await.unwrap().is_clean());
}
