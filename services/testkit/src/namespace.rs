//! A namespace's state on the shared stores removed: what a test or a load-test run leaves in
//! Redis, NATS and PostgreSQL. The services keep every Redis key under `<ns>:`, every stream
//! under `<ns>_` and their Redis epochs by namespace, so one namespace can go without touching
//! another.

use anyhow::Context;
use dp_runtime::redis::Redis;

/// Where a namespace's state lives, as the services are configured.
pub struct Namespace<'a> {
    pub name: &'a str,
    /// `single`, or `cluster` with `redis_url` the seed nodes.
    pub redis_mode: &'a str,
    pub redis_url: &'a str,
    pub nats_url: &'a str,
    pub database_url: &'a str,
}

/// What [`Namespace::clear`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    pub keys: usize,
    pub streams: usize,
    pub epochs: u64,
}

/// Keys unlinked per command: bounded, so a namespace of a hundred thousand devices never
/// becomes one command of megabytes.
const BATCH: usize = 1_000;

impl Namespace<'_> {
    /// Unlinks the namespace's Redis keys, deletes its JetStream streams (their consumers go
    /// with them) and forgets its recorded Redis epochs: without that, the next services of
    /// the namespace would take the missing keys for a lost Redis and tell every device of its
    /// folders again (a duplicate wake each). Run it while no service of the namespace runs,
    /// or they write again. Every store is tried; the first failure is returned.
    pub async fn clear(&self) -> anyhow::Result<Cleared> {
        let keys = self.clear_redis().await;
        let streams = self.clear_streams().await;
        let epochs = self.forget_epochs().await;
        Ok(Cleared {
            keys: keys?,
            streams: streams?,
            epochs: epochs?,
        })
    }

    /// The namespace's Redis keys. KEYS goes to every primary of a cluster.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let mut conn = self.redis().await?;
        Self::keys_on(&mut conn, self.name).await
    }

    async fn keys_on(conn: &mut Redis, namespace: &str) -> anyhow::Result<Vec<String>> {
        let pattern = dp_keyspace::Keyspace::new(namespace).all_keys_pattern();
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(conn)
            .await
            .context("listing the namespace's keys")
    }

    /// A connection to the namespace's Redis, as the services make it.
    pub async fn redis(&self) -> anyhow::Result<Redis> {
        let servers =
            dp_runtime::redis::RedisServers::parse(self.redis_mode, self.redis_url, None, 1000)?;
        servers
            .connect(|| true)
            .await
            .context("connecting to Redis")
    }

    async fn clear_redis(&self) -> anyhow::Result<usize> {
        let mut conn = self.redis().await?;
        let keys = Self::keys_on(&mut conn, self.name).await?;
        // A cluster's keys live in different slots: there one key per command.
        let batch = if self.redis_mode == "cluster" {
            1
        } else {
            BATCH
        };
        for chunk in keys.chunks(batch) {
            let () = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .context("unlinking the namespace's keys")?;
        }
        Ok(keys.len())
    }

    /// A client of the namespace's NATS, as the services make it.
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        let servers = dp_runtime::nats::NatsServers::parse(self.nats_url)?;
        servers
            .options()
            .connect(servers.addresses())
            .await
            .context("connecting to NATS")
    }

    async fn clear_streams(&self) -> anyhow::Result<usize> {
        let nats = self.nats().await?;
        let js = async_nats::jetstream::new(nats);
        let subjects = dp_proto::events::Subjects::new(self.name);
        let mut deleted = 0;
        for stream in [
            subjects.stream(),
            subjects.dead_stream(),
            subjects.woken_stream(),
        ] {
            if js.get_stream(&stream).await.is_err() {
                continue;
            }
            js.delete_stream(&stream)
                .await
                .with_context(|| format!("deleting the stream {stream}"))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    async fn forget_epochs(&self) -> anyhow::Result<u64> {
        let pool = sqlx::PgPool::connect(self.database_url)
            .await
            .context("connecting to the database")?;
        let forgotten = dp_db::history::forget_epochs(&pool, self.name)
            .await
            .context("forgetting the namespace's Redis epochs");
        pool.close().await;
        forgotten
    }
}
