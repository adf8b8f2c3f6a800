//! The embedded SQLite backend (WAL, `synchronous=FULL`, foreign keys on).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use time::OffsetDateTime;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// [`Store`] on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) and migrates `sqlite://PATH`.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is fsynced at every commit, so a committed row survives
            // SIGKILL and power loss (NORMAL may lose the last commits on power loss).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Invalid(format!("creating {}: {e}", dir.display())))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        tracing::info!(path = %pool.connect_options().get_filename().display(), "sqlite store opened");
        Ok(Self { pool })
    }

    /// The underlying pool (for diagnostics and tests).
    pub fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Takes the database write lock at `BEGIN`, so a transaction that reads and
    /// then writes never fails with SQLITE_BUSY halfway.
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Writers are already serialised by `BEGIN IMMEDIATE`.
    async fn lock_allocation(
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> StoreResult<()> {
        Ok(())
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, Backend::Sqlite);
