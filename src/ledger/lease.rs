//! Work-unit leases: which worker may write a unit (a source, or one partition of it).
//! With a SQLite ledger one process owns the whole data directory, so every unit is its
//! own ([`LocalLeases`]); with a PostgreSQL ledger units are leased through session
//! advisory locks ([`super::postgres::PgLeases`]).
//!
//! Invariant: a worker writes a unit's ledger rows only under a [`Fence`] that is still
//! current, so two workers that both believe they hold a unit never both commit.

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use super::LedgerError;

/// Whether a worker syncs units once or follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    Sync,
    Watch,
}

impl WorkerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Sync => "sync",
            WorkerMode::Watch => "watch",
        }
    }
}

/// A unit's lease generation as its holder took it: every acquisition bumps it, so a
/// former holder's fence no longer matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub unit: String,
    pub generation: i64,
}

impl Fence {
    /// Checks, inside a ledger transaction, that the unit's generation is still this one,
    /// and keeps it so until the transaction ends (`FOR SHARE`: a takeover's bump waits for
    /// this commit, and then sees what it committed).
    pub(crate) async fn check_in(&self, tx: &mut Transaction<'_, Any>) -> Result<(), LedgerError> {
        let row = sqlx::query("SELECT generation FROM leases WHERE unit = $1 FOR SHARE")
            .bind(&self.unit)
            .fetch_optional(&mut **tx)
            .await?;
        let current: Option<i64> = row.map(|r| r.try_get("generation")).transpose()?;
        if current == Some(self.generation) {
            Ok(())
        } else {
            Err(LedgerError::LeaseLost {
                unit: self.unit.clone(),
            })
        }
    }
}

/// A unit this worker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub unit: String,
    /// `None` where the unit cannot be contended (a data directory's single process).
    pub fence: Option<Fence>,
    /// Whether another worker held the unit and did not release it (it died or stalled).
    pub taken_over: bool,
    /// The lease session it was taken in ([`Leases::epoch`]).
    pub epoch: u64,
}

/// Who holds a unit, for `status` and for a sync deciding whether to wait for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    pub unit: String,
    pub worker: String,
    pub host: String,
    pub pid: i64,
    pub mode: String,
    pub since: String,
    /// Whether the holder's session is alive (it still holds the unit's lock).
    pub live: bool,
}

#[async_trait]
pub trait Leases: Send + Sync {
    /// This worker's id (recorded with its runs and leases).
    fn worker(&self) -> &str;
    /// Takes `unit` when no live worker holds it.
    async fn try_acquire(&self, unit: &str, mode: WorkerMode)
        -> Result<Option<Lease>, LedgerError>;
    /// Gives `lease` back (a no-op when it was lost already).
    async fn release(&self, lease: &Lease) -> Result<(), LedgerError>;
    /// Whether `lease` is still this worker's (checked before each store write).
    async fn still_held(&self, lease: &Lease) -> Result<bool, LedgerError>;
    /// Workers alive in `mode` (this one included when it runs in that mode).
    async fn live_workers(&self, mode: WorkerMode) -> Result<Vec<String>, LedgerError>;
    /// Current and last holders of units.
    async fn holders(&self) -> Result<Vec<Holder>, LedgerError>;
    /// The current lease session: it changes when a session that held leases died, and
    /// every lease of an older one is lost.
    fn epoch(&self) -> u64;
}

/// A data directory's leases: its lock file makes this process the only writer, so every
/// unit is free and no fence is needed.
#[derive(Debug)]
pub struct LocalLeases {
    worker: String,
}

impl LocalLeases {
    pub fn new() -> Self {
        Self {
            worker: worker_id(),
        }
    }
}

impl Default for LocalLeases {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Leases for LocalLeases {
    fn worker(&self) -> &str {
        &self.worker
    }

    async fn try_acquire(&self, unit: &str, _: WorkerMode) -> Result<Option<Lease>, LedgerError> {
        Ok(Some(Lease {
            unit: unit.to_string(),
            fence: None,
            taken_over: false,
            epoch: 0,
        }))
    }

    async fn release(&self, _: &Lease) -> Result<(), LedgerError> {
        Ok(())
    }

    async fn still_held(&self, _: &Lease) -> Result<bool, LedgerError> {
        Ok(true)
    }

    async fn live_workers(&self, _: WorkerMode) -> Result<Vec<String>, LedgerError> {
        Ok(vec![self.worker.clone()])
    }

    async fn holders(&self) -> Result<Vec<Holder>, LedgerError> {
        Ok(Vec::new())
    }

    fn epoch(&self) -> u64 {
        0
    }
}

/// `host:pid:random`: unique per process, readable in `status`.
pub fn worker_id() -> String {
    let host = hostname();
    let host: String = host.chars().take(32).collect();
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{host}:{}:{nonce}", std::process::id())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
