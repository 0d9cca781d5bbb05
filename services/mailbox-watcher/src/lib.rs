//! mailbox-watcher: takes mailbox changes (the ingest API, or producers publishing to
//! `<ns>.changes.>` directly), makes them durable in JetStream, and dispatches each: bump the
//! folder versions in Redis, then wake the pods that hold the mailbox's parked Pings.
//!
//! `main` and the tests both call [`run`].
#![forbid(unsafe_code)]

pub mod config;
mod dispatch;
pub mod imap;
mod ingest;
pub mod metrics;
mod ox;
pub mod store_folder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use dp_keyspace::Store;
use dp_proto::events::Subjects;
use dp_runtime::redis::Redis;
use dp_runtime::shutdown::Drain;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use config::{Config, WatcherArgs};

use crate::metrics::Metrics;

/// The name of the durable consumer every watcher shares.
pub const CONSUMER: &str = "dispatch";

pub struct Shared {
    pub config: Config,
    nats: async_nats::Client,
    jetstream: jetstream::Context,
    store: Store,
    subjects: Subjects,
    metrics: Metrics,
    stream_ready: AtomicBool,
    /// Set once the dispatcher has Redis and its consumer (with the dispatch role).
    dispatch_ready: AtomicBool,
    /// Set while the imap role reaches Redis (with that role).
    imap_ready: Arc<AtomicBool>,
    /// Wakes made where changes come in, with the dispatch role's Redis (WAKE_AT_INGEST).
    at_ingest: dispatch::at_ingest::AtIngest,
    /// Direct wake links to the frontends that take them (DIRECT_WAKES).
    links: Arc<dispatch::links::Links>,
}

/// The change stream's settings; the dead-letter and woken streams derive theirs from it.
fn changes_config(shared: &Shared) -> stream::Config {
    let storage = if shared.config.memory_storage {
        stream::StorageType::Memory
    } else {
        stream::StorageType::File
    };
    stream::Config {
        name: shared.subjects.stream(),
        subjects: vec![shared.subjects.all_changes()],
        storage,
        max_age: shared.config.changes_max_age,
        num_replicas: shared.config.changes_replicas,
        ..Default::default()
    }
}

/// Changes woken as they came in (WAKE_AT_INGEST), kept as the others are but out of the
/// dispatchers' way: delivering and acknowledging them would cost NATS two messages each.
fn woken_config(shared: &Shared) -> stream::Config {
    stream::Config {
        name: shared.subjects.woken_stream(),
        subjects: vec![shared.subjects.all_woken()],
        ..changes_config(shared)
    }
}

/// Creates the change, dead-letter and woken streams if they are missing, and applies
/// changed settings to existing ones (a new CHANGES_MAX_AGE_HOURS takes effect at start-up).
async fn ensure_stream(shared: &Shared) -> anyhow::Result<stream::Stream> {
    let changes = changes_config(shared);
    let dead = stream::Config {
        name: shared.subjects.dead_stream(),
        subjects: vec![shared.subjects.all_dead()],
        max_age: Duration::from_secs(7 * 86_400),
        ..changes.clone()
    };
    let stream = current_stream(shared, changes).await?;
    current_stream(shared, dead).await?;
    current_stream(shared, woken_config(shared)).await?;
    shared.stream_ready.store(true, Ordering::Release);
    Ok(stream)
}

/// Creates the woken stream again when a write found none (an operator deleted it, or it was
/// lost with its only NATS node). No consumer reads it, so a new one loses nothing; without
/// one, every change woken at the ingest would be refused (503) until a restart. The change
/// stream is not recreated this way: its consumer would be new too, and would deliver every
/// change again (see `dispatcher`).
pub(crate) async fn restore_woken_stream(shared: &Shared) {
    let config = woken_config(shared);
    let name = config.name.clone();
    if shared.jetstream.get_stream(&name).await.is_ok() {
        // It exists (a stream without a leader for the moment refuses writes the same way).
        return;
    }
    match shared.jetstream.create_stream(config).await {
        Ok(_) => tracing::warn!(stream = %name, "the woken stream was missing; created it again"),
        Err(err) => {
            tracing::warn!(stream = %name, error = %err, "the woken stream is missing and could not be created")
        }
    }
}

async fn current_stream(shared: &Shared, config: stream::Config) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    let mut stream = shared
        .jetstream
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("reading the stream {name}: {e}"))?;
    if info.config.max_age != config.max_age
        || info.config.subjects != config.subjects
        || info.config.num_replicas != config.num_replicas
    {
        shared
            .jetstream
            .update_stream(config)
            .await
            .map_err(|e| anyhow::anyhow!("updating the stream {name}: {e}"))?;
        tracing::info!(stream = %name, "stream settings updated");
    }
    if info.cluster.as_ref().is_some_and(|c| c.leader.is_none()) {
        until_led(&mut stream, &name).await;
    }
    Ok(stream)
}

/// Waits (10 s at most) until a replicated stream has elected its leader: until then its
/// subjects have no responder, and a change written to it would be refused with 503.
async fn until_led(stream: &mut stream::Stream, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match stream.info().await {
            Ok(info) if info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => return,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tracing::warn!(stream = %name, "the stream has no leader after 10 s; changes to it are refused until it has one");
}

/// Runs a watcher until `drain` fires. `ingest` is the ingest API's listener (with the ingest
/// role).
pub async fn run(
    config: Config,
    ingest: Option<TcpListener>,
    admin: TcpListener,
    mut drain: Drain,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let nats = connect_nats(&config).await?;
    let links = Arc::new(dispatch::links::Links::new(
        &config,
        nats.clone(),
        metrics.links.clone(),
        drain.clone(),
    ));
    let shared = Arc::new(Shared {
        jetstream: jetstream::new(nats.clone()),
        store: Store::new(&config.common.namespace, config.device_state_ttl.as_secs()),
        links,
        subjects: Subjects::new(&config.common.namespace),
        stream_ready: AtomicBool::new(false),
        dispatch_ready: AtomicBool::new(false),
        imap_ready: Arc::new(AtomicBool::new(false)),
        at_ingest: Default::default(),
        config,
        nats,
        metrics,
    });
    let admin_task = tokio::spawn(dp_runtime::admin::serve(
        admin,
        dp_runtime::admin::router(Arc::new(registry), readiness(shared.clone())),
        drain.clone(),
    ));
    let Some(stream) = wait_for_stream(&shared, &mut drain).await else {
        return Ok(());
    };
    let tasks = start_roles(&shared, ingest, stream, &drain).await?;
    tracing::info!(pod = %shared.config.common.pod, ingest = shared.config.ingest, dispatch = shared.config.dispatch, imap = shared.config.imap.is_some(), "mailbox-watcher running");
    drain.signalled().await;
    for task in tasks {
        let _ = task.await;
    }
    let _ = admin_task.await;
    Ok(())
}

/// NATS, retried for ever: the watcher waits for it rather than exit.
async fn connect_nats(config: &Config) -> anyhow::Result<async_nats::Client> {
    config
        .common
        .nats
        .options()
        .name(format!("mailbox-watcher/{}", config.common.pod))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(2000))
        })
        .connect(config.common.nats.addresses())
        .await
        .context("NATS_URL")
}

/// The change stream, once JetStream answers; `None` when the drain comes first.
async fn wait_for_stream(shared: &Shared, drain: &mut Drain) -> Option<stream::Stream> {
    loop {
        match ensure_stream(shared).await {
            Ok(stream) => return Some(stream),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "waiting for JetStream");
                tokio::select! {
                    _ = drain.signalled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

type Task = tokio::task::JoinHandle<Result<(), std::io::Error>>;

/// Starts the roles the configuration asks for: the ingest API, the dispatcher, the IMAP
/// watcher. Each runs until the drain.
async fn start_roles(
    shared: &Arc<Shared>,
    ingest: Option<TcpListener>,
    stream: stream::Stream,
    drain: &Drain,
) -> anyhow::Result<Vec<Task>> {
    let mut tasks: Vec<Task> = Vec::new();
    if let Some(listener) = ingest.filter(|_| shared.config.ingest) {
        let router = ingest::router(shared.clone());
        tasks.push(tokio::spawn(dp_runtime::admin::serve(
            listener,
            router,
            drain.clone(),
        )));
    }
    if shared.config.dispatch {
        let redis = connect_redis(shared, drain).await?;
        shared.at_ingest.connected(redis.clone());
        shared.links.connected(redis.clone());
        let (s, d) = (shared.clone(), drain.clone());
        tasks.push(tokio::spawn(async move {
            dispatcher(s, stream, redis, d).await;
            Ok(())
        }));
    }
    if let Some(settings) = shared.config.imap.clone() {
        let redis = connect_redis(shared, drain).await?;
        let (s, d, ready) = (shared.clone(), drain.clone(), shared.imap_ready.clone());
        tasks.push(tokio::spawn(async move {
            imap::run(s, settings, redis, ready, d).await;
            Ok(())
        }));
    }
    Ok(tasks)
}

/// A Redis connection of a role's own: the dispatcher's bumps never queue behind the IMAP
/// role's scans on one multiplexed connection.
async fn connect_redis(shared: &Shared, drain: &Drain) -> anyhow::Result<Redis> {
    shared
        .config
        .common
        .redis
        .connect(|| drain.is_signalled())
        .await
        .context("REDIS_URL")
}

/// Runs the dispatch loop until the drain. If its consumer goes away (deleted, the stream
/// recreated), the watcher reports not ready and stops dispatching: a consumer created anew
/// would deliver every change the stream still holds again, so an operator decides (restarting
/// the watcher does exactly that).
async fn dispatcher(shared: Arc<Shared>, stream: stream::Stream, redis: Redis, drain: Drain) {
    match consume(&shared, &stream).await {
        Ok((consumer, messages)) => {
            shared.dispatch_ready.store(true, Ordering::Release);
            let pending = tokio::spawn(watch_pending(shared.clone(), consumer));
            dispatch::run(shared.clone(), redis, messages, drain.clone()).await;
            pending.abort();
        }
        Err(err) => tracing::error!(error = %format!("{err:#}"), "dispatch consumer unavailable"),
    }
    shared.dispatch_ready.store(false, Ordering::Release);
    if !drain.is_signalled() {
        tracing::error!("the dispatcher stopped: reporting not ready");
    }
}

type Consumer = consumer::Consumer<consumer::pull::Config>;

/// How long one pull request for changes waits on the consumer's leader before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The server's idle heartbeat on a pull request; two missed make the stream report an error.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Creates the dispatch consumer, or updates an existing one to today's settings.
async fn consume(
    shared: &Shared,
    stream: &stream::Stream,
) -> anyhow::Result<(Consumer, consumer::pull::Stream)> {
    let config = consumer::pull::Config {
        durable_name: Some(CONSUMER.to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: shared.config.ack_wait,
        max_deliver: shared.config.max_deliver,
        max_ack_pending: 100_000,
        ..Default::default()
    };
    let consumer = match stream.create_consumer(config.clone()).await {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::warn!(error = %err, "the dispatch consumer's settings could not be applied; using it as it is");
            stream
                .get_or_create_consumer(CONSUMER, config)
                .await
                .map_err(|e| anyhow::anyhow!("creating the dispatch consumer: {e}"))?
        }
    };
    // A pull request lives on the consumer's leader: when that NATS node dies, the request dies
    // with it and the client would ask again only when it expires (30 s by default), leaving
    // the changes undispatched meanwhile. Short-lived requests (and heartbeats to notice a
    // silent one) bound that stall to a few seconds, for one small request per 5 s.
    let messages = consumer
        .stream()
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("reading the change stream: {e}"))?;
    Ok((consumer, messages))
}

async fn watch_pending(shared: Arc<Shared>, mut consumer: Consumer) {
    loop {
        if let Ok(info) = consumer.info().await {
            shared.metrics.pending.set(info.num_pending as i64);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn readiness(shared: Arc<Shared>) -> dp_runtime::admin::ReadinessCheck {
    Arc::new(move || {
        let shared = shared.clone();
        Box::pin(async move {
            let mut problems = Vec::new();
            if shared.nats.connection_state() != async_nats::connection::State::Connected {
                problems.push("NATS disconnected");
            }
            if !shared.stream_ready.load(Ordering::Acquire) {
                problems.push("change stream not ready");
            }
            if shared.config.dispatch && !shared.dispatch_ready.load(Ordering::Acquire) {
                problems.push("dispatcher not running (waiting for Redis or its consumer, or the consumer is gone)");
            }
            if shared.config.imap.is_some() && !shared.imap_ready.load(Ordering::Acquire) {
                problems.push("imap role cannot reach Redis");
            }
            dp_runtime::ready_unless(problems)
        })
    })
}

/// NATS headers carrying the current span's trace context, when it is traced.
/// Header of a change published by the ingest API: how many changes of the same request come
/// after it. A dispatcher that took a change with followers waits `COALESCE_MS` for them.
const FOLLOWS: &str = "Dp-Follows";

fn trace_headers() -> Option<async_nats::HeaderMap> {
    let value = dp_runtime::telemetry::traceparent(&tracing::Span::current())?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(dp_runtime::telemetry::TRACEPARENT, value.as_str());
    Some(headers)
}
