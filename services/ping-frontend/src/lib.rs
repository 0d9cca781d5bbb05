//! ping-frontend: terminates device connections, authenticates, serves and parks `Cmd=Ping`,
//! wakes parked Pings on the watcher's word, and writes heartbeat history.
//!
//! `main` and the tests both call [`run`] with listeners they bound.
#![forbid(unsafe_code)]

pub mod auth;
mod client;
mod cluster;
pub mod config;
mod connection;
mod delivery;
mod epoch;
#[doc(hidden)]
pub mod http;
pub mod jwt;
mod limits;
pub mod metrics;
mod parked;
mod ping;
mod pinged;
pub mod proxy;
mod router;
mod server;
pub mod tls;
mod transport;
mod wake_link;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dp_keyspace::Store;
use dp_proto::events::Subjects;
use dp_runtime::redis::Redis;
use dp_runtime::shutdown::Drain;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use config::{Config, FrontendArgs};

use crate::metrics::{CodeLabels, Metrics};
use crate::parked::Parked;

/// Everything a connection task needs, shared by all of them.
pub struct Shared {
    pub config: Config,
    store: Store,
    redis: Redis,
    nats: async_nats::Client,
    subjects: Subjects,
    parked: Parked,
    auth: auth::Auth,
    history: dp_db::history::HistorySink,
    metrics: Metrics,
    next_request: AtomicU64,
    limits: limits::Limits,
    state: State,
    tls: Option<Arc<tls::Tls>>,
    /// Proxy mode: the ActiveSync server every command but Ping goes to.
    upstream: Option<proxy::Upstream>,
    /// The Redis state's incarnation (see `epoch`).
    epoch: epoch::Seen,
}

/// The pod's own flags: each set by one task, read by every connection.
#[derive(Default)]
struct State {
    /// Subscribed to its NATS subjects: wakes can reach it (readiness).
    subscribed: AtomicBool,
    /// Set when the drain starts, before parked Pings are told: a Ping that registers later
    /// sees the flag, one that registered earlier gets told.
    draining: AtomicBool,
    /// Set on the drain signal: the pod reports not ready from then on.
    shutting_down: AtomicBool,
    /// An IMAP watcher runs: record the mailboxes of parked Pings (see `pinged`).
    imap_index: AtomicBool,
}

impl Shared {
    fn new(
        config: Config,
        pool: sqlx::PgPool,
        redis: Redis,
        nats: async_nats::Client,
        history: dp_db::history::HistorySink,
        metrics: Metrics,
    ) -> anyhow::Result<Shared> {
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                tls::Tls::new(files.clone()).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        let upstream = match config.upstream.clone() {
            Some(upstream) => Some(proxy::Upstream::new(upstream).context("UPSTREAM_URL")?),
            None => None,
        };
        Ok(Shared {
            store: Store::new(&config.common.namespace, config.device_state_ttl.as_secs())
                .with_max_devices(config.max_devices_per_mailbox),
            subjects: Subjects::new(&config.common.namespace),
            auth: auth::Auth::new(
                pool,
                config.auth_cache_size,
                config.auth_cache_ttl,
                auth::Throttle {
                    per_source: limits::RateWindow::new(config.auth_failures_per_source),
                    per_account: limits::RateWindow::new(config.auth_failures_per_account),
                    verify_queue: config.auth_verify_queue,
                },
                config.jwt.clone(),
            )?,
            parked: Parked::default(),
            next_request: AtomicU64::new(dp_runtime::now_ms() << 20),
            limits: limits::Limits::new(&config),
            state: State::default(),
            epoch: epoch::Seen::default(),
            tls,
            upstream,
            config,
            redis,
            nats,
            history,
            metrics,
        })
    }

    /// Request ids are unique per pod incarnation: they start at the start time in ms shifted
    /// left, so a restarted pod with the same name never reuses a live id.
    fn next_request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    fn count_limited(&self, limit: &'static str) {
        self.metrics
            .limited
            .get_or_create(&metrics::LimitLabels { limit })
            .inc();
    }

    /// Who acknowledges a Status 2: the answer (standalone) or the device's Sync (proxy).
    fn mode(&self) -> dp_keyspace::Mode {
        match self.upstream {
            Some(_) => dp_keyspace::Mode::Proxy,
            None => dp_keyspace::Mode::Standalone,
        }
    }

    fn count_http(&self, code: u16) {
        self.metrics
            .http_responses
            .get_or_create(&CodeLabels { code })
            .inc();
    }
}

/// Runs a frontend on `listener` (devices) and `admin` until `drain` fires and its parked
/// Pings are answered.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    drain: Drain,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let pool = dp_db::lazy_pool(&config.database_url, config.database_pool_size)?;
    if config.migrate_on_start {
        dp_db::migrate(&pool).await?;
    }
    let (history, history_writer) =
        dp_db::history::spawn_writer(pool.clone(), config.history, metrics.history.clone());
    let redis = config
        .common
        .redis
        .connect(|| drain.is_signalled())
        .await
        .context("REDIS_URL")?;
    let (nats, nats_events) = cluster::connect(&config.common.nats, &config.common.pod).await?;
    let shared = Arc::new(Shared::new(config, pool, redis, nats, history, metrics)?);
    cluster::watch_connection(shared.clone(), nats_events);
    pinged::watch(shared.clone()).await;
    epoch::watch(shared.clone()).await;
    if let Some(tls) = &shared.tls {
        tls.clone().watch(shared.metrics.tls_reloads.clone());
    }
    cluster::subscribe(&shared, &drain).await?;
    if let Some(link) = &shared.config.wake_link {
        wake_link::spawn(shared.clone(), wake_link::bind(link).await?, drain.clone());
    }
    // The admin port outlives the drain, so probes see "not ready" throughout it.
    let (admin_stop, admin_drain) = dp_runtime::shutdown::Shutdown::new();
    let admin_task = tokio::spawn(dp_runtime::admin::serve(
        admin,
        dp_runtime::admin::router(Arc::new(registry), readiness(shared.clone())),
        admin_drain,
    ));
    tracing::info!(
        pod = %shared.config.common.pod,
        upstream = shared.config.upstream.as_ref().map_or("none (standalone)", |u| u.url.as_str()),
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "ping-frontend serving"
    );
    server::serve(shared.clone(), listener, drain).await;
    admin_stop.signal();
    let _ = admin_task.await;
    // Every Ping is answered: write their history, then stop.
    history_writer.finish(Duration::from_secs(5)).await;
    Ok(())
}

/// Ready when subscribed to its subjects, connected to NATS, and Redis answers.
fn readiness(shared: Arc<Shared>) -> dp_runtime::admin::ReadinessCheck {
    Arc::new(move || {
        let shared = shared.clone();
        Box::pin(async move {
            let mut problems = Vec::new();
            if shared.state.shutting_down.load(Ordering::SeqCst) {
                problems.push("draining");
            }
            if !shared.state.subscribed.load(Ordering::Acquire) {
                problems.push("not yet subscribed to its NATS subjects");
            }
            if shared.nats.connection_state() != async_nats::connection::State::Connected {
                problems.push("NATS disconnected");
            }
            let mut redis = shared.redis.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut redis);
            if !matches!(
                tokio::time::timeout(Duration::from_secs(1), ping).await,
                Ok(Ok(_))
            ) {
                problems.push("Redis not answering");
            }
            dp_runtime::ready_unless(problems)
        })
    })
}
