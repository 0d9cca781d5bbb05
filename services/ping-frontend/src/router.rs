//! The whole router on one page: which request gets which answer.

use std::sync::Arc;

use crate::transport::Transport;
use dp_proto::query::{Command, EasRequest, QueryError};
use tokio::io::AsyncWriteExt;

use crate::auth::AuthError;
use crate::http::request::{Method, Request};
use crate::http::response;
use crate::ping::{self, Started};
use crate::Shared;

const EAS_PATH: &str = "/Microsoft-Server-ActiveSync";

/// What became of a request.
// The large variant is moved straight into the parked state, which holds it anyway; boxing it
// would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Routed {
    /// Answered; whether the connection stays open.
    Done(bool),
    /// A Ping, answered at once or parked; the connection finishes it.
    Ping(Started),
}

/// Answers one request, or starts its Ping.
pub async fn handle<S: Transport>(
    shared: &Arc<Shared>,
    stream: &mut S,
    request: Request,
    peer: std::net::IpAddr,
) -> std::io::Result<Routed> {
    if !request.path.eq_ignore_ascii_case(EAS_PATH) {
        return refuse(shared, stream, 404, "not an ActiveSync path", &[]).await;
    }
    match request.method {
        Method::Options => {
            shared.count_http(200);
            stream.write_all(&response::options()).await?;
            Ok(Routed::Done(request.keep_alive))
        }
        Method::Other => {
            let allow = [("Allow", "OPTIONS,POST".to_owned())];
            refuse(shared, stream, 405, "use OPTIONS or POST", &allow).await
        }
        Method::Post => post(shared, stream, request, peer).await,
    }
}

async fn post<S: Transport>(
    shared: &Arc<Shared>,
    stream: &mut S,
    request: Request,
    peer: std::net::IpAddr,
) -> std::io::Result<Routed> {
    let query = match EasRequest::parse_query(&request.query) {
        Ok(query) => query,
        Err(err @ QueryError::UnknownCommand(_)) => {
            return refuse(shared, stream, 501, &err.to_string(), &[]).await
        }
        Err(err) => {
            tracing::info!(reason = %err, "request refused: unusable query");
            return refuse(shared, stream, 400, &err.to_string(), &[]).await;
        }
    };
    let mailbox = match shared
        .auth
        .authenticate(request.authorization.as_deref(), peer, &shared.metrics)
        .await
    {
        Ok(mailbox) => mailbox,
        Err(AuthError::Missing | AuthError::Rejected) => {
            let challenge = [("WWW-Authenticate", shared.auth.challenge().to_owned())];
            return refuse(shared, stream, 401, "credentials required", &challenge).await;
        }
        Err(AuthError::Throttled(wait)) => {
            shared.count_limited("auth_failures");
            shared.count_http(503);
            let retry = (wait.as_secs() as u32).max(1);
            let answer = response::unavailable(retry, "too many failed logins; retry later");
            stream.write_all(&answer).await?;
            return Ok(Routed::Done(false));
        }
        Err(AuthError::Unavailable) => {
            shared.count_http(503);
            let answer = response::unavailable(
                shared.config.retry_after_secs,
                "accounts unavailable; retry later",
            );
            stream.write_all(&answer).await?;
            return Ok(Routed::Done(false));
        }
    };
    if let Some(user) = &query.user {
        if dp_proto::ids::canonical_mailbox(user) != mailbox {
            tracing::info!(%mailbox, "request refused: credentials are not for the User parameter");
            return refuse(
                shared,
                stream,
                403,
                "credentials do not belong to User",
                &[],
            )
            .await;
        }
    }
    if query.command != Command::Ping {
        let message = format!("{} is not served by this tier", query.command.name());
        return refuse(shared, stream, 501, &message, &[]).await;
    }
    let device = dp_proto::ids::device_key(&mailbox, &query.device_id);
    if let Err(wait) = shared.ping_rate.hit(&device) {
        shared.count_limited("pings_per_device");
        tracing::info!(%mailbox, device = %query.device_id, "Ping refused: over the per-device rate");
        shared.count_http(503);
        let retry = (wait.as_secs() as u32).max(1);
        let answer = response::unavailable(retry, "too many Pings from this device; retry later");
        stream.write_all(&answer).await?;
        return Ok(Routed::Done(false));
    }
    Ok(Routed::Ping(
        ping::start(shared, &query, mailbox, device, &request).await,
    ))
}

/// An error answer; the connection stays open for 401, 403 and 501 (the request was read in
/// full), and closes otherwise.
async fn refuse<S: Transport>(
    shared: &Shared,
    stream: &mut S,
    code: u16,
    message: &str,
    headers: &[(&str, String)],
) -> std::io::Result<Routed> {
    let keep = matches!(code, 401 | 403 | 404 | 405 | 501);
    shared.count_http(code);
    stream
        .write_all(&response::error(code, message, headers, !keep))
        .await?;
    Ok(Routed::Done(keep))
}
