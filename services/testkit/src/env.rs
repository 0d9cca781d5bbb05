//! One test's isolated world on the shared services.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::PgPool;

use crate::namespace::Namespace;

pub struct Env {
    pub namespace: String,
    pub database: String,
    pub database_url: String,
    pub redis_url: String,
    /// `single`, or `cluster` with `redis_url` the seed nodes (`REDIS_MODE` runs every test on
    /// a Redis Cluster).
    pub redis_mode: String,
    pub nats_url: String,
    /// The bearer token the test watchers accept.
    pub ingest_token: String,
    pub pool: PgPool,
    admin_url: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Env {
    /// A fresh namespace and database with migrations applied.
    pub async fn new() -> Env {
        let namespace = format!(
            "t{:08x}{:x}{}",
            rand::random::<u32>(),
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = var(
            "TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let database = format!("dp_{namespace}");
        let admin = PgPool::connect(&admin_url)
            .await
            .expect("PostgreSQL at TEST_DATABASE_URL (127.0.0.1:5432/test) must run");
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await
            .expect("creates the test database");
        admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let database_url = format!("{base}/{database}");
        let pool = PgPool::connect(&database_url)
            .await
            .expect("connects to the test database");
        dp_db::migrate(&pool).await.expect("migrations apply");
        Env {
            namespace,
            database,
            database_url,
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            redis_mode: var("REDIS_MODE", "single"),
            nats_url: var("NATS_URL", "nats://127.0.0.1:4222"),
            ingest_token: "test-ingest-token-0123456789".into(),
            pool,
            admin_url,
        }
    }

    /// Adds an account that may Ping.
    pub async fn account(&self, name: &str, password: &str) {
        dp_db::accounts::upsert(&self.pool, name, password)
            .await
            .expect("account added");
    }

    /// Rows of the heartbeat history: (device, outcome, status), oldest first.
    pub async fn history(&self) -> Vec<(String, String, Option<i16>)> {
        sqlx::query_as("SELECT device_id, outcome, status FROM ping_history ORDER BY ended_at")
            .fetch_all(&self.pool)
            .await
            .expect("reads history")
    }

    /// A connection to the test's Redis (a single server or a cluster, as the services use it).
    pub async fn redis(&self) -> dp_runtime::redis::Redis {
        self.try_redis().await.expect("Redis answers")
    }

    async fn try_redis(&self) -> anyhow::Result<dp_runtime::redis::Redis> {
        self.stores().redis().await
    }

    /// A client of the test's NATS (one server or a cluster, with credentials as the services
    /// take them).
    pub async fn nats(&self) -> async_nats::Client {
        self.try_nats().await.expect("NATS answers")
    }

    /// The address of the test's single Redis server (for a proxy in front of it).
    pub fn redis_addr(&self) -> std::net::SocketAddr {
        self.redis_url
            .trim_start_matches("redis://")
            .parse()
            .expect("REDIS_URL is redis://ip:port")
    }

    /// How many changes the namespace's stream `<ns>_<kind>` (`changes`, `woken`, `dead`) holds.
    pub async fn stream_messages(&self, kind: &str) -> u64 {
        let jetstream = async_nats::jetstream::new(self.nats().await);
        let name = format!("{}_{kind}", self.namespace);
        let mut stream = jetstream.get_stream(&name).await.expect("the stream");
        stream.info().await.expect("its info").state.messages
    }

    /// Deletes the namespace's stream `<ns>_<kind>`, as an operator might.
    pub async fn delete_stream(&self, kind: &str) {
        let jetstream = async_nats::jetstream::new(self.nats().await);
        let name = format!("{}_{kind}", self.namespace);
        jetstream
            .delete_stream(&name)
            .await
            .expect("the stream deleted");
    }

    /// Whether the namespace's stream `<ns>_<kind>` exists.
    pub async fn stream_exists(&self, kind: &str) -> bool {
        let jetstream = async_nats::jetstream::new(self.nats().await);
        let name = format!("{}_{kind}", self.namespace);
        jetstream.get_stream(&name).await.is_ok()
    }

    async fn try_nats(&self) -> anyhow::Result<async_nats::Client> {
        self.stores().nats().await
    }

    /// The recorded owner of the device's parked Ping, if any.
    pub async fn owner(&self, mailbox: &str, device_id: &str) -> Option<dp_keyspace::Owner> {
        let mut conn = self.try_redis().await.ok()?;
        let keys = dp_keyspace::Keyspace::new(&self.namespace);
        let device = dp_proto::ids::device_key(mailbox, device_id);
        let value: Option<String> = redis::cmd("HGET")
            .arg(keys.owners(mailbox))
            .arg(device)
            .query_async(&mut conn)
            .await
            .ok()?;
        dp_keyspace::Owner::parse(&value?)
    }

    /// Waits until the device's Ping is claimed by `pod` with another request than `before`.
    pub async fn wait_parked(
        &self,
        mailbox: &str,
        device_id: &str,
        pod: &str,
        before: Option<&dp_keyspace::Owner>,
    ) -> dp_keyspace::Owner {
        crate::wait_for(
            &format!("{device_id}'s Ping to park on {pod}"),
            std::time::Duration::from_secs(10),
            || async move {
                self.owner(mailbox, device_id)
                    .await
                    .filter(|o| o.pod == pod && Some(o) != before)
            },
        )
        .await
    }

    /// Where the test's namespace keeps its state.
    pub fn stores(&self) -> Namespace<'_> {
        Namespace {
            name: &self.namespace,
            redis_mode: &self.redis_mode,
            redis_url: &self.redis_url,
            nats_url: &self.nats_url,
            database_url: &self.database_url,
        }
    }

    /// The Redis keys of the test's namespace.
    pub async fn keys(&self) -> Vec<String> {
        self.stores().keys().await.expect("the namespace's keys")
    }

    /// Removes what the test left: Redis keys, the JetStream streams, the database (with its
    /// epochs).
    pub async fn cleanup(self) {
        // Best effort: a test that broke a store on purpose may leave it unreachable.
        let _ = self.stores().clear().await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            ))
            .execute(&admin)
            .await;
        }
    }
}
