//! The PostgreSQL backend.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Advisory-lock key that serialises node creation (address and name allocation).
const ALLOCATION_LOCK: i64 = 0x7765_6674_0001;

/// [`Store`] on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
}

impl PgStore {
    /// Connects to `postgres://...` and runs migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        tracing::info!("postgres store opened");
        Ok(Self { pool })
    }

    /// The underlying pool (for diagnostics and tests).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Serialises allocations with a transaction-scoped advisory lock; the unique
    /// constraints and the retry in `create_node` remain the safety net.
    async fn lock_allocation(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ALLOCATION_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl_store!(PgStore, sqlx::Postgres, Backend::Postgres);
