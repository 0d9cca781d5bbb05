//! directpush's PostgreSQL: the migrations in `migrations/`, accounts with argon2id password
//! hashes, and the heartbeat history, written in batches off the request path.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod history;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool that connects on first use: a database that is down at start-up must not stop a
/// frontend from serving (history is best-effort, and verified credentials are cached).
pub fn lazy_pool(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(url)
        .context("DATABASE_URL is not a usable PostgreSQL URL")
}

/// Applies the pending migrations and creates the coming days' history partitions.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    history::maintain_partitions(pool, None).await?;
    Ok(())
}
