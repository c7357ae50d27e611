//! The ledger as a PostgreSQL schema shared by workers on any number of hosts, and the
//! leases that give each work unit one holder at a time.
//!
//! Invariants: a unit is held while its holder's lease session holds the unit's advisory
//! lock, so it is freed when that session ends: at once when the process dies, and after
//! `lease_takeover_s` of silence when the process stalls or its network is lost (the
//! server ends idle lease sessions: `idle_session_timeout`). Every acquisition bumps the
//! unit's generation, and ledger commits check it ([`super::Fence`]), so a holder that
//! lost the unit and wakes up late cannot commit.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, Row};
use tokio::sync::Mutex;

use super::lease::{hostname, worker_id, Fence, Holder, Lease, Leases, WorkerMode};
use super::{now, Ledger, LedgerError};
use crate::config::LedgerConfig;

/// Prefix of the lease sessions' `application_name`: `freshet-<mode> <worker>`.
const APP_PREFIX: &str = "freshet-";
/// How long taking a unit may wait for a commit of its former holder still in flight.
const TAKE_LOCK_TIMEOUT: &str = "2s";

/// Opens the shared ledger: creates its schema if needed, applies the PostgreSQL
/// migrations (serialized across workers by sqlx's migration lock), and prepares the
/// leases (their session connects on first use).
pub async fn open(url: &str, settings: &LedgerConfig) -> Result<(Ledger, PgLeases), LedgerError> {
    sqlx::any::install_default_drivers();
    let pg = PgConnectOptions::from_str(url).map_err(|_| {
        LedgerError::Setup(
            "the shared ledger's URL is not a valid PostgreSQL URL (postgres://user@host:port/db)"
                .into(),
        )
    })?;
    let location = format!(
        "{}:{}/{} (schema {})",
        pg.get_host(),
        pg.get_port(),
        pg.get_database().unwrap_or("postgres"),
        settings.schema
    );
    let secret = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .filter(|p| !p.is_empty());
    let unreachable = |err: sqlx::Error| {
        let mut text = err.to_string();
        if let Some(secret) = &secret {
            text = text.replace(secret.as_str(), "***");
        }
        LedgerError::Setup(format!(
            "cannot reach the shared ledger at {location}: {text}"
        ))
    };
    let schema = settings.schema.clone();
    // Looked up first: CREATE SCHEMA IF NOT EXISTS needs the right to create schemas even
    // when the schema exists, which a worker's role may lack.
    let mut first = pg
        .clone()
        .options([("client_min_messages", "warning")])
        .connect()
        .await
        .map_err(unreachable)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&schema)
            .fetch_one(&mut first)
            .await?;
    if !exists {
        let created = first
            .execute(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"").as_str())
            .await;
        // Workers starting together race here: IF NOT EXISTS is not safe against a
        // concurrent CREATE, which fails with a unique violation once the other commits.
        // The schema then exists, which is all this wanted.
        match created {
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("23505") | Some("42P06")) => {}
            other => {
                other?;
            }
        }
    }
    first.close().await?;

    let idle_in_tx = format!("{}s", settings.lease_takeover_s);
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            let schema = schema.clone();
            let idle_in_tx = idle_in_tx.clone();
            Box::pin(async move {
                conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
                    .await?;
                conn.execute("SET client_min_messages TO warning").await?;
                // A worker paused inside a commit must not keep a unit's lease row
                // locked past the takeover: the server ends such a transaction.
                conn.execute(
                    format!("SET idle_in_transaction_session_timeout = '{idle_in_tx}'").as_str(),
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(AnyConnectOptions::from_str(url)?)
        .await
        .map_err(unreachable)?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    let ledger = Ledger::new(pool.clone(), location);
    ledger.backfill_key_hashes().await?;
    let leases = PgLeases {
        inner: Arc::new(Inner {
            options: pg,
            schema: settings.schema.clone(),
            takeover: Duration::from_secs(settings.lease_takeover_s),
            worker: worker_id(),
            pool,
            session: Mutex::new(None),
            epoch: AtomicU64::new(0),
        }),
    };
    Ok((ledger, leases))
}

/// Leases through PostgreSQL session advisory locks, held on one session per worker.
pub struct PgLeases {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLeases")
            .field("worker", &self.inner.worker)
            .finish_non_exhaustive()
    }
}

struct Inner {
    options: PgConnectOptions,
    schema: String,
    takeover: Duration,
    worker: String,
    /// The ledger's pool, for reads that need no session of their own.
    pool: AnyPool,
    /// The lease session and the units it holds; `None` until first used, and again
    /// after it died.
    session: Mutex<Option<Session>>,
    /// Bumped whenever a lease session ends: leases of an older epoch are gone.
    epoch: AtomicU64,
}

struct Session {
    conn: PgConnection,
    held: HashSet<String>,
}

impl Inner {
    /// The advisory lock key of a unit (per schema, so two ledgers in one database never
    /// collide).
    fn lock_key(&self, unit: &str) -> i64 {
        let hash =
            blake3::hash(format!("freshet lease\u{1f}{}\u{1f}{unit}", self.schema).as_bytes());
        i64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// The lease session, connecting it when there is none.
    async fn session<'a>(
        self: &Arc<Self>,
        slot: &'a mut Option<Session>,
        mode: WorkerMode,
    ) -> Result<&'a mut Session, LedgerError> {
        if slot.is_none() {
            let idle = self
                .takeover
                .saturating_sub(Duration::from_secs(1))
                .max(Duration::from_secs(1));
            let mut conn = self
                .options
                .clone()
                .application_name(&format!("{APP_PREFIX}{} {}", mode.as_str(), self.worker))
                .options([("client_min_messages", "warning")])
                .connect()
                .await?;
            conn.execute(format!("SET search_path TO \"{}\"", self.schema).as_str())
                .await?;
            conn.execute(format!("SET lock_timeout = '{TAKE_LOCK_TIMEOUT}'").as_str())
                .await?;
            // The server ends this session, and so frees its units, when the worker has
            // been silent for the takeover time (paused, or cut off by the network).
            if let Err(err) = conn
                .execute(format!("SET idle_session_timeout = '{}ms'", idle.as_millis()).as_str())
                .await
            {
                tracing::warn!(error = %err, "this PostgreSQL cannot end silent sessions (idle_session_timeout needs version 14); a stalled worker's units are freed only when its connection drops");
            }
            *slot = Some(Session {
                conn,
                held: HashSet::new(),
            });
            let weak = Arc::downgrade(self);
            tokio::spawn(heartbeat(weak, self.takeover / 4));
        }
        Ok(slot.as_mut().expect("connected above"))
    }

    /// Takes `unit` on the lease session: its advisory lock, then a bumped generation.
    async fn acquire(
        self: &Arc<Self>,
        slot: &mut Option<Session>,
        unit: &str,
        mode: WorkerMode,
    ) -> Result<Option<Lease>, LedgerError> {
        let key = self.lock_key(unit);
        let worker = self.worker.clone();
        if let Some(session) = slot.as_mut() {
            // Held already, as far as this worker knows: unless the session died unseen
            // (its locks died with it), there is nothing to take. (Advisory locks stack
            // within a session, so it must not lock the unit twice.)
            if session.held.contains(unit) {
                if session.conn.execute("SELECT 1").await.is_ok() {
                    return Ok(None);
                }
                self.lose(slot);
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let session = self.session(slot, mode).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut session.conn)
            .await?;
        if !got {
            return Ok(None);
        }
        let previous: Option<Option<String>> =
            sqlx::query_scalar("SELECT worker FROM leases WHERE unit = $1")
                .bind(unit)
                .fetch_optional(&mut session.conn)
                .await?;
        // Waits (up to the lock timeout) for a commit of the former holder in flight.
        let bumped: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO leases (unit, generation, worker, host, pid, mode, since)
             VALUES ($1, 1, $2, $3, $4, $5, $6)
             ON CONFLICT (unit) DO UPDATE SET generation = leases.generation + 1,
                 worker = excluded.worker, host = excluded.host, pid = excluded.pid,
                 mode = excluded.mode, since = excluded.since
             RETURNING generation",
        )
        .bind(unit)
        .bind(&worker)
        .bind(hostname())
        .bind(std::process::id() as i64)
        .bind(mode.as_str())
        .bind(now())
        .fetch_one(&mut session.conn)
        .await;
        let generation = match bumped {
            Ok(generation) => generation,
            Err(err) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut session.conn)
                    .await;
                let err = LedgerError::from(err);
                if err.is_transient() {
                    // The former holder's commit is still in flight: ask again later.
                    tracing::debug!(unit, error = %err, "unit not taken yet");
                    return Ok(None);
                }
                return Err(err);
            }
        };
        session.held.insert(unit.to_string());
        let taken_over = previous.flatten().is_some_and(|w| w != worker);
        Ok(Some(Lease {
            unit: unit.to_string(),
            fence: Some(Fence {
                unit: unit.to_string(),
                generation,
            }),
            taken_over,
            epoch,
        }))
    }

    /// Ends the session's life as far as this worker is concerned: its leases are gone.
    fn lose(&self, slot: &mut Option<Session>) {
        if slot.take().is_some() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Keeps the lease session from looking idle; when it fails, the session and every unit
/// it held are gone (the server may already have handed them to others).
async fn heartbeat(inner: Weak<Inner>, every: Duration) {
    let every = every.max(Duration::from_millis(250));
    let epoch = match inner.upgrade() {
        Some(inner) => inner.epoch.load(Ordering::SeqCst),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut slot = inner.session.lock().await;
        if inner.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        let Some(session) = slot.as_mut() else { return };
        if let Err(err) = session.conn.execute("SELECT 1").await {
            let units = session.held.len();
            tracing::error!(error = %err, units, "the lease session to the shared ledger died; this worker's units are lost and will be taken over");
            inner.lose(&mut slot);
            return;
        }
    }
}

#[async_trait]
impl Leases for PgLeases {
    fn worker(&self) -> &str {
        &self.inner.worker
    }

    async fn try_acquire(
        &self,
        unit: &str,
        mode: WorkerMode,
    ) -> Result<Option<Lease>, LedgerError> {
        let inner = &self.inner;
        let mut slot = inner.session.lock().await;
        let result = inner.acquire(&mut slot, unit, mode).await;
        if let Err(err) = &result {
            if err.is_transient() {
                inner.lose(&mut slot);
            }
        }
        result
    }

    async fn release(&self, lease: &Lease) -> Result<(), LedgerError> {
        let inner = &self.inner;
        let mut slot = inner.session.lock().await;
        if lease.epoch != inner.epoch.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(session) = slot.as_mut() else {
            return Ok(());
        };
        if !session.held.remove(&lease.unit) {
            return Ok(());
        }
        let generation = lease.fence.as_ref().map_or(0, |f| f.generation);
        let released = async {
            sqlx::query("UPDATE leases SET worker = NULL WHERE unit = $1 AND generation = $2")
                .bind(&lease.unit)
                .bind(generation)
                .execute(&mut session.conn)
                .await?;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(inner.lock_key(&lease.unit))
                .execute(&mut session.conn)
                .await?;
            Ok::<_, LedgerError>(())
        }
        .await;
        if released.is_err() {
            // The session is in doubt: ending it frees every unit it held.
            inner.lose(&mut slot);
        }
        released
    }

    async fn still_held(&self, lease: &Lease) -> Result<bool, LedgerError> {
        if lease.epoch != self.inner.epoch.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let Some(fence) = &lease.fence else {
            return Ok(true);
        };
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM leases WHERE unit = $1")
                .bind(&fence.unit)
                .fetch_optional(&self.inner.pool)
                .await?;
        Ok(generation == Some(fence.generation))
    }

    async fn live_workers(&self, mode: WorkerMode) -> Result<Vec<String>, LedgerError> {
        {
            // Joins first, so this worker counts itself.
            let mut slot = self.inner.session.lock().await;
            self.inner.session(&mut slot, mode).await?;
        }
        let prefix = format!("{APP_PREFIX}{} ", mode.as_str());
        let rows = sqlx::query(
            "SELECT application_name AS name FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE $1
             ORDER BY application_name",
        )
        .bind(format!("{prefix}%"))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                Ok(name.trim_start_matches(&prefix).to_string())
            })
            .collect()
    }

    async fn holders(&self) -> Result<Vec<Holder>, LedgerError> {
        let locked: HashSet<(i64, i64)> = sqlx::query(
            "SELECT CAST(classid AS BIGINT) AS hi, CAST(objid AS BIGINT) AS lo FROM pg_locks
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&self.inner.pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("hi")?, row.try_get("lo")?)))
        .collect::<Result<_, LedgerError>>()?;
        let rows =
            sqlx::query("SELECT unit, worker, host, pid, mode, since FROM leases ORDER BY unit")
                .fetch_all(&self.inner.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let unit: String = row.try_get("unit")?;
                let key = self.inner.lock_key(&unit) as u64;
                let live = locked.contains(&((key >> 32) as i64, (key & 0xffff_ffff) as i64));
                Ok(Holder {
                    worker: row
                        .try_get::<Option<String>, _>("worker")?
                        .unwrap_or_default(),
                    host: row
                        .try_get::<Option<String>, _>("host")?
                        .unwrap_or_default(),
                    pid: row.try_get::<Option<i64>, _>("pid")?.unwrap_or_default(),
                    mode: row
                        .try_get::<Option<String>, _>("mode")?
                        .unwrap_or_default(),
                    since: row
                        .try_get::<Option<String>, _>("since")?
                        .unwrap_or_default(),
                    live,
                    unit,
                })
            })
            .collect()
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }
}
