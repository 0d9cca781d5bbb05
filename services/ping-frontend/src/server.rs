//! The accept loop: one task per connection, a bound on connections, and the drain.

use std::sync::Arc;
use std::time::Duration;

use dp_runtime::shutdown::Drain;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client;
use crate::http::response;
use crate::limits::SourceSlot;
use crate::parked::End;
use crate::tls::Tls;
use crate::transport::{TlsStream, WriteDeadline};
use crate::{connection, Shared};

/// How long past DRAIN_SECS the drain waits for the last connections to close.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

pub async fn serve(shared: Arc<Shared>, listener: TcpListener, drain: Drain) {
    let capacity = shared.config.max_connections;
    let permits = Arc::new(Semaphore::new(capacity));
    let stop_accepting = stop_accepting(shared.clone(), drain.clone());
    tokio::pin!(stop_accepting);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop_accepting => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors or a connection reset before accept: back off
                // briefly rather than spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some((mut stream, permit, early)) = take(&shared, &permits, stream, peer) else {
            continue;
        };
        let (shared, drain) = (shared.clone(), drain.clone());
        // Plain and TLS connections are spawned as separate futures: a task is as large as its
        // largest state, and a plaintext connection must not pay for TLS's.
        match shared.tls.clone() {
            None => {
                tokio::spawn(async move {
                    let Some((ip, source)) =
                        Box::pin(admit(&shared, &mut stream, peer, early)).await
                    else {
                        return;
                    };
                    let stream = WriteDeadline::new(stream, shared.config.write_timeout);
                    connection::serve(&shared, stream, ip, drain).await;
                    drop((permit, source));
                });
            }
            Some(tls) => {
                tokio::spawn(async move {
                    let Some((ip, source)) =
                        Box::pin(admit(&shared, &mut stream, peer, early)).await
                    else {
                        return;
                    };
                    // Boxed: the handshake's state lives only while it runs, not in the
                    // task of every parked connection.
                    if let Some(stream) = Box::pin(handshake(&shared, stream, &tls, ip)).await {
                        let stream = WriteDeadline::new(stream, shared.config.write_timeout);
                        connection::serve(&shared, stream, ip, drain).await
                    }
                    drop((permit, source));
                });
            }
        }
    }
    drop(listener);
    drain_parked(&shared, &permits, capacity).await;
}

/// A connection under MAX_CONNECTIONS and, when the peer is the client, under its source's
/// limit; `None` when it was refused.
fn take(
    shared: &Shared,
    permits: &Arc<Semaphore>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TcpStream, OwnedSemaphorePermit, Option<SourceSlot>)> {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        refuse(shared, stream, "connections");
        return None;
    };
    // Without the PROXY protocol the peer is the client: count it here, in accept order.
    let early = match shared.config.proxy_protocol {
        true => None,
        false => match shared.limits.sources.acquire(peer.ip()) {
            Some(slot) => Some(slot),
            None => {
                refuse(shared, stream, "connections_per_source");
                return None;
            }
        },
    };
    let _ = stream.set_nodelay(true);
    // Bytes a vanished device never acknowledges fail the connection in bounded time (see
    // `delivery`); an idle parked connection has none, and is not affected.
    let _ =
        socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(shared.config.delivery_timeout));
    Some((stream, permit, early))
}

/// On the drain signal the pod reports not ready at once, and keeps accepting for the drain
/// delay while load balancers notice.
async fn stop_accepting(shared: Arc<Shared>, mut drain: Drain) {
    drain.signalled().await;
    shared
        .state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let delay = shared.config.drain_delay;
    tracing::info!(
        delay_secs = delay.as_secs_f64(),
        "draining: reporting not ready"
    );
    tokio::time::sleep(delay).await;
}

/// The TLS handshake, within HEADER_TIMEOUT_SECS; `None` when it failed (counted).
async fn handshake(shared: &Shared, stream: TcpStream, tls: &Tls, ip: IpAddr) -> Option<TlsStream> {
    let accepted = TlsStream::accept(stream, tls.config.clone());
    match tokio::time::timeout(shared.config.header_timeout, accepted).await {
        Ok(Ok(stream)) => {
            shared.metrics.count_handshake(stream.resumed());
            Some(stream)
        }
        Ok(Err(err)) => {
            // Scanners and dropped phones fail handshakes all day: debug only.
            tracing::debug!(%ip, error = %err, "TLS handshake failed");
            shared.metrics.tls_handshake_failures.inc();
            None
        }
        Err(_) => {
            tracing::debug!(%ip, "TLS handshake timed out");
            shared.metrics.tls_handshake_failures.inc();
            None
        }
    }
}

/// The client's address (from the PROXY protocol header when PROXY_PROTOCOL is on) and its
/// place under MAX_CONNECTIONS_PER_SOURCE; `None` when the connection is refused.
async fn admit(
    shared: &Arc<Shared>,
    stream: &mut TcpStream,
    peer: SocketAddr,
    early: Option<SourceSlot>,
) -> Option<(IpAddr, SourceSlot)> {
    if let Some(slot) = early {
        return Some((peer.ip(), slot));
    }
    let ip = if shared.config.proxy_protocol {
        match client::read_proxy_header(stream, shared.config.header_timeout).await {
            Ok(Some(client)) => client.ip(),
            // The balancer's own connection (a health check): its own address.
            Ok(None) => peer.ip(),
            Err(err) => {
                shared.count_limited("proxy_protocol");
                tracing::info!(%peer, error = %err, "connection closed: no valid PROXY protocol header");
                return None;
            }
        }
    } else {
        peer.ip()
    };
    match shared.limits.sources.acquire(ip) {
        Some(slot) => Some((ip, slot)),
        None => {
            shared.count_limited("connections_per_source");
            shared.count_http(503);
            let answer = response::unavailable(
                shared.config.retry_after_secs,
                "too many connections (connections_per_source); retry later",
            );
            let _ = stream.write_all(&answer).await;
            None
        }
    }
}

/// Answers a connection over MAX_CONNECTIONS with 503, without holding up the accept loop.
fn refuse(shared: &Shared, mut stream: TcpStream, limit: &'static str) {
    shared.count_limited(limit);
    shared.count_http(503);
    let answer = response::unavailable(
        shared.config.retry_after_secs,
        &format!("too many connections ({limit}); retry later"),
    );
    tokio::spawn(async move {
        let _ = stream.write_all(&answer).await;
    });
}

/// Answers the parked Pings with Status 1 spread evenly over DRAIN_SECS, so their devices
/// reconnect elsewhere without a herd; returns when every connection is closed, or at the
/// deadline.
async fn drain_parked(shared: &Shared, permits: &Semaphore, capacity: usize) {
    shared
        .state
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let slots = shared.parked.slots();
    let spread = shared.config.drain;
    tracing::info!(
        parked = slots.len(),
        spread_secs = spread.as_secs_f64(),
        "stopped accepting; answering parked Pings"
    );
    let started = tokio::time::Instant::now();
    let count = slots.len().max(1) as u32;
    let answer_all = async {
        for (i, slot) in slots.into_iter().enumerate() {
            tokio::time::sleep_until(started + spread * i as u32 / count).await;
            slot.tell(|s| s.end = Some(End::Drained));
        }
        let all = u32::try_from(capacity).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
    };
    if tokio::time::timeout(spread + DRAIN_GRACE, answer_all)
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed with connections still open");
    }
}
