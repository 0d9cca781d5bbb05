//! The accept loop: one task per connection, a bound on connections, and the drain.

use std::sync::Arc;
use std::time::Duration;

use dp_runtime::shutdown::Drain;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::response;
use crate::parked::End;
use crate::{connection, Shared};

/// How long the drain waits for parked Pings to be answered and their connections to close.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut drain: Drain) {
    let capacity = shared.config.max_connections;
    let permits = Arc::new(Semaphore::new(capacity));
    loop {
        let accepted = tokio::select! {
            _ = drain.signalled() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors or a connection reset before accept: back off
                // briefly rather than spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                let drain = drain.clone();
                tokio::spawn(async move {
                    connection::serve(&shared, stream, drain).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let answer = response::unavailable(
                    shared.config.retry_after_secs,
                    "too many connections; retry later",
                );
                shared.count_http(503);
                tokio::spawn(async move {
                    let _ = stream.write_all(&answer).await;
                });
            }
        }
    }
    drop(listener);
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let parked = shared.parked.tell_all(|s| s.end = Some(End::Drained));
    tracing::info!(parked, "stopped accepting; answering parked Pings");
    let all = u32::try_from(capacity).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_DEADLINE, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed with connections still open");
    }
}
