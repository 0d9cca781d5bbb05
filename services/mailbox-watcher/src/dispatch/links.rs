//! Direct wake links (`DIRECT_WAKES`): one TCP connection from this watcher to each frontend
//! that announces a wake port, carrying the wakes that would otherwise go through the NATS
//! server (frames in [`dp_proto::wake_link`]). Issue 14: on loopback every hop between
//! processes costs a round trip and a wake-up, and this removes one from every wake.
//!
//! I1 does not rest on a link. A wake a link took counts as delivered only once the frontend
//! acknowledged it (after telling the Pings it names); [`Links::settle`] waits for that, and a
//! link that fails or stays silent past [`ACK_TIMEOUT`] hands every wake it has not seen
//! acknowledged to NATS before it counts them settled. So a change is acknowledged (or written
//! as woken) only when its wake reached the frontend, or NATS holds it as before: a duplicate
//! at worst, never a loss. The first wake to a pod goes over NATS while its link opens.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use dp_keyspace::Store;
use dp_proto::wake_link::{self, Hello, HelloReply};
use dp_runtime::frames::read_frame as frame;
use dp_runtime::redis::Redis;
use dp_runtime::shutdown::Drain;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::LinkMetrics;

/// A wake not acknowledged within this goes over NATS, and the link is closed: a frontend
/// tells its Pings in microseconds, so this is a frontend that hangs or a network that broke.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(250);
/// Looking up, dialling and greeting a frontend may take this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);
/// After a link fails, its pod's wakes go over NATS for this long before it is tried again;
/// after each further failure to open one, twice as long, up to [`MAX_REST`].
const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// A dead pod's address stays announced for up to a minute (its expiry): trying it more often
/// than this by then only fills the log.
const MAX_REST: Duration = Duration::from_secs(60);
/// A pod that announced no wake port is looked up again after this.
const REST_WITHOUT_PORT: Duration = Duration::from_secs(10);

/// What a link sends, and what goes over NATS if the link fails before it is acknowledged.
pub struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    pub traceparent: Option<String>,
}

enum Slot {
    Opening,
    /// `failures`: attempts to open a link to the pod that failed in a row.
    Resting {
        until: Instant,
        failures: u32,
    },
    Open(Arc<Link>),
}

/// How long a pod's wakes go over NATS after `failures` attempts in a row failed to open a link.
fn rest_after(failures: u32) -> Duration {
    REST_AFTER_FAILURE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_REST)
}

struct Link {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Wakes handed to the link.
    sent: AtomicU64,
    /// Wakes acknowledged, or sent over NATS after the link failed (then `u64::MAX`).
    settled: watch::Sender<u64>,
}

/// The links of one watcher, by pod.
pub struct Links {
    enabled: bool,
    store: Store,
    nats: async_nats::Client,
    hello: Hello,
    metrics: LinkMetrics,
    drain: Drain,
    redis: OnceLock<Redis>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Links whose wakes are not all settled yet (open ones, and failed ones until their
    /// fallback is published).
    unsettled: Mutex<Vec<Arc<Link>>>,
}

impl Links {
    pub fn new(
        config: &crate::Config,
        nats: async_nats::Client,
        metrics: LinkMetrics,
        drain: Drain,
    ) -> Links {
        Links {
            enabled: config.direct_wakes,
            hello: Hello {
                namespace: config.common.namespace.clone(),
                pod: String::new(),
                secret: config.common.wake_secret.clone(),
            },
            // Its own: the lookups need only the key names.
            store: Store::new(&config.common.namespace, config.device_state_ttl.as_secs()),
            nats,
            metrics,
            drain,
            redis: OnceLock::new(),
            slots: Mutex::new(HashMap::new()),
            unsettled: Mutex::new(Vec::new()),
        }
    }

    /// Links are looked up with this connection (the dispatch role's).
    pub fn connected(&self, redis: Redis) {
        let _ = self.redis.set(redis);
    }

    /// Hands `wake` to `pod`'s link, or gives it back when there is no open link (one is
    /// opened in the background for the next wake).
    pub fn send(self: &Arc<Self>, pod: &str, wake: Outgoing) -> Result<(), Outgoing> {
        if !self.enabled {
            return Err(wake);
        }
        let mut slots = lock(&self.slots);
        match slots.get(pod) {
            Some(Slot::Open(link)) => {
                link.tx.send(wake).map_err(|refused| refused.0)?;
                link.sent.fetch_add(1, Ordering::AcqRel);
                self.metrics.wakes.inc();
                Ok(())
            }
            Some(Slot::Opening) => Err(wake),
            Some(Slot::Resting { until, .. }) if Instant::now() < *until => Err(wake),
            slot => {
                let failures = match slot {
                    Some(Slot::Resting { failures, .. }) => *failures,
                    _ => 0,
                };
                let Some(redis) = self.redis.get().cloned() else {
                    return Err(wake);
                };
                slots.insert(pod.to_owned(), Slot::Opening);
                tokio::spawn(self.clone().open(pod.to_owned(), redis, failures));
                Err(wake)
            }
        }
    }

    /// Waits until every wake handed to a link so far is acknowledged or handed to NATS
    /// (at most about [`ACK_TIMEOUT`], after which a link fails over). Flush NATS afterwards.
    pub async fn settle(&self) {
        let links: Vec<(Arc<Link>, u64)> = lock(&self.unsettled)
            .iter()
            .map(|link| (link.clone(), link.sent.load(Ordering::Acquire)))
            .collect();
        for (link, target) in links {
            let mut settled = link.settled.subscribe();
            // An error means the link is gone, its fallback published.
            let _ = settled.wait_for(|n| *n >= target).await;
        }
    }

    /// `failures`: the attempts before this one that failed in a row.
    async fn open(self: Arc<Self>, pod: String, mut redis: Redis, failures: u32) {
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.dial(&pod, &mut redis)).await;
        let failure = match opened {
            Ok(Ok(Some(opened))) => return self.opened(pod, opened).await,
            Ok(Ok(None)) => return self.rest(&pod, None, REST_WITHOUT_PORT, failures),
            Ok(Err(err)) => format!("{err:#}"),
            Err(_) => "timed out".to_owned(),
        };
        let failures = failures.saturating_add(1);
        let rest = rest_after(failures);
        // A pod that died leaves its address announced for up to MAX_REST: said once, then
        // each retry only at debug level.
        if failures == 1 {
            tracing::warn!(%pod, error = %failure, retry_in_secs = rest.as_secs(), "no direct wake link to a frontend; its wakes go over NATS");
        } else {
            tracing::debug!(%pod, error = %failure, failures, retry_in_secs = rest.as_secs(), "still no direct wake link to a frontend");
        }
        self.rest(&pod, None, rest, failures);
    }

    async fn opened(self: Arc<Self>, pod: String, (stream, addr): (TcpStream, String)) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            tx,
            sent: AtomicU64::new(0),
            settled: watch::Sender::new(0),
        });
        lock(&self.unsettled).push(link.clone());
        lock(&self.slots).insert(pod.clone(), Slot::Open(link.clone()));
        self.metrics.open.inc();
        tracing::info!(%pod, %addr, "direct wake link open");
        let (read, write) = stream.into_split();
        let (acked_tx, acked) = watch::channel(0u64);
        tokio::spawn(read_acks(read, acked_tx));
        let ended = self.carry(&link, rx, write, acked).await;
        self.metrics.open.dec();
        tracing::info!(%pod, %addr, reason = ended, "direct wake link closed; its wakes go over NATS");
        self.rest(&pod, Some(&link), REST_AFTER_FAILURE, 0);
    }

    /// Finds `pod`'s announced address and greets it; `None` when it announced none.
    async fn dial(
        &self,
        pod: &str,
        redis: &mut Redis,
    ) -> anyhow::Result<Option<(TcpStream, String)>> {
        let Some(addr) = self.store.wake_addr(redis, pod).await? else {
            return Ok(None);
        };
        let stream = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let hello = Hello {
            pod: pod.to_owned(),
            ..self.hello.clone()
        };
        let mut out = Vec::new();
        wake_link::put_frame(&mut out, &serde_json::to_vec(&hello)?)?;
        let mut stream = stream;
        stream.write_all(&out).await?;
        let reply: HelloReply = serde_json::from_slice(&frame(&mut stream, 4096).await?)
            .context("the frontend's reply is not JSON")?;
        if let Some(reason) = reply.refused {
            anyhow::bail!("{addr} refused the link: {reason}");
        }
        Ok(Some((stream, addr)))
    }

    /// Writes the link's wakes and retires those acknowledged, until the link fails, a wake
    /// waits too long, or the drain; then hands the rest to NATS. Returns why it ended.
    async fn carry(
        &self,
        link: &Link,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
        mut write: OwnedWriteHalf,
        mut acked: watch::Receiver<u64>,
    ) -> &'static str {
        let mut drain = self.drain.clone();
        let mut waiting: VecDeque<(u64, Outgoing, Instant)> = VecDeque::new();
        let mut written = 0u64;
        let mut buf = Vec::new();
        let ended = loop {
            let deadline = waiting.front().map(|w| w.2 + ACK_TIMEOUT);
            tokio::select! {
                _ = drain.signalled() => break "the watcher stops",
                wake = rx.recv() => {
                    let Some(wake) = wake else { break "closed" };
                    buf.clear();
                    let mut next = Some(wake);
                    // Everything queued goes out in one write.
                    while let Some(wake) = next.take() {
                        if wake_link::put_wake(&mut buf, wake.traceparent.as_deref(), &wake.payload).is_ok() {
                            written += 1;
                            waiting.push_back((written, wake, Instant::now()));
                        } else {
                            // Too large for a link (never, split under max_payload): NATS.
                            self.fall_back(std::iter::once(wake)).await;
                        }
                        next = rx.try_recv().ok();
                    }
                    let sent = tokio::time::timeout(ACK_TIMEOUT, write.write_all(&buf)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break "a write failed or stalled";
                    }
                }
                changed = acked.changed() => {
                    if changed.is_err() {
                        break "the frontend closed it";
                    }
                    let count = *acked.borrow_and_update();
                    while waiting.front().is_some_and(|w| w.0 <= count) {
                        waiting.pop_front();
                    }
                    link.settled.send_replace(count);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    break "no acknowledgement in time";
                }
            }
        };
        // No wake enters the link from here on: those already queued go with the rest.
        rx.close();
        while let Ok(wake) = rx.try_recv() {
            waiting.push_back((0, wake, Instant::now()));
        }
        self.fall_back(waiting.into_iter().map(|w| w.1)).await;
        link.settled.send_replace(u64::MAX);
        ended
    }

    async fn fall_back(&self, wakes: impl Iterator<Item = Outgoing>) {
        for wake in wakes {
            self.metrics.fell_back.inc();
            if let Err(err) = publish(&self.nats, wake).await {
                // Only a closed client refuses; the change's flush fails too, so it is
                // redelivered (or not written as woken).
                tracing::warn!(error = %err, "a wake could not be handed to NATS");
            }
        }
    }

    /// Marks `pod` as resting for `rest` after `failures` failed attempts in a row (unless a
    /// newer link took its slot), and forgets `link` once its wakes are settled.
    fn rest(&self, pod: &str, link: Option<&Arc<Link>>, rest: Duration, failures: u32) {
        let mut slots = lock(&self.slots);
        let ours = match (slots.get(pod), link) {
            (Some(Slot::Open(open)), Some(link)) => Arc::ptr_eq(open, link),
            (Some(Slot::Opening), None) => true,
            _ => false,
        };
        let now = Instant::now();
        // Pods come and go under new names: forget those whose rest is long over (a pod still
        // in use keeps its count of failures until it is tried again).
        slots.retain(
            |_, slot| !matches!(slot, Slot::Resting { until, .. } if *until + MAX_REST <= now),
        );
        if ours {
            let until = now + rest;
            slots.insert(pod.to_owned(), Slot::Resting { until, failures });
        }
        drop(slots);
        if let Some(link) = link {
            lock(&self.unsettled).retain(|l| !Arc::ptr_eq(l, link));
        }
    }
}

/// Publishes `wake` on its pod's NATS subject, with its trace context as a header.
pub async fn publish(
    nats: &async_nats::Client,
    wake: Outgoing,
) -> Result<(), async_nats::PublishError> {
    match wake.traceparent {
        Some(traceparent) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(dp_runtime::telemetry::TRACEPARENT, traceparent.as_str());
            nats.publish_with_headers(wake.subject, headers, wake.payload)
                .await
        }
        None => nats.publish(wake.subject, wake.payload).await,
    }
}

/// Reads the frontend's acknowledgements until the link ends (dropping `acked` says so).
async fn read_acks(read: OwnedReadHalf, acked: watch::Sender<u64>) {
    let mut read = BufReader::new(read);
    loop {
        let count = match frame(&mut read, 8).await {
            Ok(body) => wake_link::parse_ack(&body),
            Err(err) => {
                tracing::debug!(error = %err, "a direct wake link's reader ended");
                return;
            }
        };
        match count {
            Ok(count) => {
                acked.send_replace(count);
            }
            Err(err) => {
                tracing::warn!(error = %err, "a frontend sent a bad acknowledgement; closing the link");
                return;
            }
        }
    }
}

/// The maps stay consistent whatever panicked while holding them: each update is one insert.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_that_keeps_failing_is_tried_less_often_up_to_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|f| rest_after(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(rest_after(u32::MAX), MAX_REST);
    }
}
