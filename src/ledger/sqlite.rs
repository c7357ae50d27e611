//! The ledger as a SQLite file in the data directory: one process writes through it at a
//! time (the data directory's lock), so its units need no leases.
//!
//! Invariant: a committed row survives power loss (WAL with `synchronous = FULL`), so the
//! ledger cannot fall behind store writes that were already synced.

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::Executor;

use super::{Ledger, LedgerError};

/// Opens (creating if needed) the SQLite ledger at `path` and applies its migrations.
pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
    sqlx::any::install_default_drivers();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| LedgerError::Database(err.into()))?;
    }
    let absolute = std::path::absolute(path).map_err(|err| LedgerError::Database(err.into()))?;
    let file_url = url::Url::from_file_path(&absolute).map_err(|()| {
        LedgerError::Setup(format!(
            "the ledger path {} cannot be opened",
            absolute.display()
        ))
    })?;
    let options = AnyConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", file_url.path()))?;
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // busy_timeout first: the other pragmas may have to wait for a writer.
                conn.execute("PRAGMA busy_timeout = 30000").await?;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    let ledger = Ledger::new(pool, absolute.display().to_string());
    ledger.backfill_key_hashes().await?;
    Ok(ledger)
}
