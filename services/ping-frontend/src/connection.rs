//! One device connection: read a request, answer it, repeat while keep-alive holds. Waits on
//! {a request, the client gone, the drain}; a parked Ping waits inside `ping::wait`.

use std::sync::Arc;

use crate::transport::Transport;
use dp_runtime::shutdown::Drain;
use tokio::io::AsyncWriteExt;

use crate::delivery;
use crate::http::request;
use crate::http::response;
use crate::ping::{self, Reply, Started};
use crate::router::{self, Routed};
use crate::Shared;

pub async fn serve<S: Transport>(
    shared: &Arc<Shared>,
    mut stream: S,
    peer: std::net::IpAddr,
    mut drain: Drain,
) {
    shared.metrics.connections.inc();
    shared.metrics.connections_opened.inc();
    let mut buf = Vec::new();
    // A Status 2 written, until this connection shows whether the device read it.
    let mut unconfirmed = None;
    loop {
        let read = tokio::select! {
            _ = drain.signalled(), if buf.is_empty() => break,
            read = Box::pin(request::read_head(
                &mut stream,
                &mut buf,
                shared.config.idle_timeout,
                shared.config.header_timeout,
                shared.config.sizes,
            )) => read,
        };
        let request = match read {
            // A next request on the connection: the device read the answer before it (what
            // this request's reply leaves replaces `unconfirmed`).
            Ok(request) => request,
            Err(err) => {
                Box::pin(unreadable(shared, &mut stream, err, &mut unconfirmed)).await;
                break;
            }
        };
        // Everything but the parked wait runs boxed: a connection's future is as large as its
        // largest state, and the parked state is the one a hundred thousand connections share.
        // (Not a function of its own: an async fn keeps its arguments, the request among them,
        // in every state, which made a parked connection 288 bytes larger.)
        let exchange = router::Exchange {
            shared,
            stream: &mut stream,
            buf: &mut buf,
            peer,
        };
        let reply = match Box::pin(router::handle(exchange, request)).await {
            Ok(Routed::Done(keep_alive)) => Reply {
                keep_alive,
                unconfirmed: None,
            },
            Ok(Routed::Ping(Started::Answer(answer))) => {
                let (context, finished) = *answer;
                Box::pin(ping::finish(shared, &mut stream, &context, Ok(finished)))
                    .await
                    .unwrap_or_default()
            }
            Ok(Routed::Ping(Started::Parked(waiting))) => {
                let ended =
                    ping::wait(&waiting, &mut stream, &mut buf, shared.config.sizes.head).await;
                Box::pin(ping::finish(shared, &mut stream, &waiting.context, ended))
                    .await
                    .unwrap_or_default()
            }
            Err(_) => Reply::default(),
        };
        unconfirmed = reply.unconfirmed;
        if !reply.keep_alive {
            break;
        }
    }
    match unconfirmed {
        Some(_) => Box::pin(delivery::linger(shared, &mut stream, unconfirmed)).await,
        None => {
            let _ = stream.shutdown().await;
        }
    }
    shared.metrics.connections.dec();
}

/// A connection that failed under a read. Only the TLS record layer says `InvalidData`: the
/// device sent, after the handshake, what TLS does not allow (an alert, a record that fails
/// authentication, a handshake message other than KeyUpdate). A middlebox that rewrites
/// traffic shows here, so it is counted and its reason logged; other failures (a reset) are
/// the network's and only end the connection.
pub fn failed(shared: &Shared, err: &std::io::Error) {
    if err.kind() == std::io::ErrorKind::InvalidData {
        shared.metrics.tls_errors.inc();
        tracing::info!(reason = %err, "TLS connection ended: the device sent what TLS refuses");
    }
}

/// A request that could not be read: a broken connection settles the Status 2 it leaves
/// unconfirmed (any other error lets it linger), and a request the pod refuses hears why.
async fn unreadable<S: Transport>(
    shared: &Arc<Shared>,
    stream: &mut S,
    err: request::ReadError,
    unconfirmed: &mut Option<Box<delivery::Unconfirmed>>,
) {
    if let request::ReadError::Io(io) = &err {
        failed(shared, io);
        delivery::settle(shared, unconfirmed.take(), Some(io));
    }
    if let Some((code, limit)) = err.answer() {
        if let Some(limit) = limit {
            shared.count_limited(limit);
        }
        tracing::info!(code, reason = %err, "request refused");
        shared.count_http(code);
        let _ = stream
            .write_all(&response::error(code, &err.to_string(), &[], true))
            .await;
    }
}
