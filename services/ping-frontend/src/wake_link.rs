//! The frontend's end of direct wake links (`WAKE_LISTEN_ADDR`, frames in
//! [`dp_proto::wake_link`]). A watcher that finds this pod's announced address sends its wakes
//! here instead of through the NATS server: one hop between processes fewer on every wake. A
//! wake is acknowledged only after the Pings it names were told, and the watcher sends any wake
//! not acknowledged in time over NATS: the link may fail at any moment without losing one.
//! NATS stays what the pod is reachable by (readiness depends on it, not on this port).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dp_proto::wake_link::{self, Hello, HelloReply};
use dp_runtime::frames::read_frame as frame;
use dp_runtime::shutdown::Drain;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::Shared;

/// How long the address lives in Redis unless refreshed; refreshed every third of it.
const ANNOUNCE_TTL: Duration = Duration::from_secs(60);
/// After an announcement failed, the next try comes this soon.
const RETRY_ANNOUNCE: Duration = Duration::from_secs(1);
/// A watcher that connects must say who it wants within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest hello read: it comes before the secret is checked.
const MAX_HELLO: usize = 4096;

/// `WAKE_LISTEN_ADDR` and what to announce for it.
#[derive(Clone, Debug)]
pub struct WakeLinkConfig {
    pub listen: SocketAddr,
    /// The host watchers dial (`WAKE_ADVERTISE_HOST`, such as the pod's IP); `None`: the bound
    /// address itself, which then names a host (checked with the configuration).
    pub advertise_host: Option<String>,
}

/// A bound wake port and the address it is announced as.
pub struct Listening {
    listener: TcpListener,
    announced: String,
}

/// Binds `WAKE_LISTEN_ADDR` (port 0 picks one: the announced address carries the real port).
pub async fn bind(config: &WakeLinkConfig) -> anyhow::Result<Listening> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("WAKE_LISTEN_ADDR {}", config.listen))?;
    let bound = listener.local_addr()?;
    let announced = match &config.advertise_host {
        Some(host) if host.contains(':') => format!("[{host}]:{}", bound.port()),
        Some(host) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    };
    Ok(Listening {
        listener,
        announced,
    })
}

/// Takes links until the drain, and keeps the address announced meanwhile.
pub fn spawn(shared: Arc<Shared>, listening: Listening, drain: Drain) {
    tracing::info!(addr = %listening.announced, "taking direct wakes");
    tokio::spawn(announce(
        shared.clone(),
        listening.announced.clone(),
        drain.clone(),
    ));
    tokio::spawn(accept(shared, listening.listener, drain));
}

async fn accept(shared: Arc<Shared>, listener: TcpListener, mut drain: Drain) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = drain.signalled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, most likely: the devices' port sees the same.
                    tracing::warn!(error = %err, "the wake port could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            shared.metrics.wake_links.inc();
            if let Err(err) = serve(&shared, stream, drain).await {
                tracing::info!(%peer, error = %err, "a direct wake link ended");
            }
            shared.metrics.wake_links.dec();
        });
    }
}

/// Announces the address now and every third of its lifetime; withdraws it on the drain, so
/// watchers go back to NATS before the pod is gone.
async fn announce(shared: Arc<Shared>, addr: String, mut drain: Drain) {
    let pod = &shared.config.common.pod;
    loop {
        let mut redis = shared.redis.clone();
        let call = shared
            .store
            .announce_wake_addr(&mut redis, pod, &addr, ANNOUNCE_TTL.as_secs());
        let next = match tokio::time::timeout(shared.config.redis_timeout, call).await {
            Ok(Ok(())) => ANNOUNCE_TTL / 3,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not announce the wake port; watchers use NATS meanwhile");
                RETRY_ANNOUNCE
            }
            Err(_) => {
                tracing::warn!(
                    "Redis timed out announcing the wake port; watchers use NATS meanwhile"
                );
                RETRY_ANNOUNCE
            }
        };
        tokio::select! {
            _ = drain.signalled() => break,
            _ = tokio::time::sleep(next) => {}
        }
    }
    let mut redis = shared.redis.clone();
    let call = shared.store.withdraw_wake_addr(&mut redis, pod, &addr);
    if let Ok(Err(err)) = tokio::time::timeout(shared.config.redis_timeout, call).await {
        tracing::info!(error = %err, "could not withdraw the wake port; it expires by itself");
    }
}

/// One watcher's link: its hello, then its wakes, each acknowledged once told.
async fn serve(shared: &Shared, stream: TcpStream, mut drain: Drain) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, frame(&mut read, MAX_HELLO))
        .await
        .context("no hello in time")??;
    let hello: Hello = serde_json::from_slice(&hello).context("the hello is not JSON")?;
    let common = &shared.config.common;
    let verdict = hello.check(&common.namespace, &common.pod, &common.wake_secret);
    let reply = HelloReply {
        refused: verdict.clone().err(),
    };
    let mut out = Vec::new();
    wake_link::put_frame(&mut out, &serde_json::to_vec(&reply)?)?;
    write.write_all(&out).await?;
    if let Err(reason) = verdict {
        tracing::warn!(pod = %hello.pod, %reason, "a direct wake link refused");
        return Ok(());
    }
    let mut handled = 0u64;
    loop {
        let body = tokio::select! {
            _ = drain.signalled() => return Ok(()),
            body = frame(&mut read, wake_link::MAX_FRAME) => match body {
                Ok(body) => body,
                // The watcher closed the link (it restarts, or found the link idle).
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(err) => return Err(err.into()),
            },
        };
        let (traceparent, payload) = wake_link::split_wake(&body)?;
        crate::cluster::on_wake(shared, payload, traceparent);
        shared.metrics.link_wakes.inc();
        handled += 1;
        // One acknowledgement for all the wakes that arrived together.
        if read.buffer().is_empty() {
            write.write_all(&wake_link::ack_frame(handled)).await?;
        }
    }
}
