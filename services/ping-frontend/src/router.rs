//! The whole router on one page: which request gets which answer. Only the head has been read
//! when a request arrives here: a Ping's body is read once the Ping is authenticated, a
//! forwarded body streams to the upstream.

use std::sync::Arc;

use dp_proto::query::{Command, EasRequest, QueryError};
use tokio::io::AsyncWriteExt;

use crate::auth::AuthError;
use crate::http::request::{self, Framing, Method, Request};
use crate::http::response;
use crate::ping::{self, Started};
use crate::transport::Transport;
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

/// One request's connection: the stream, the bytes read past the head, and the peer.
pub struct Exchange<'a, S> {
    pub shared: &'a Arc<Shared>,
    pub stream: &'a mut S,
    pub buf: &'a mut Vec<u8>,
    pub peer: std::net::IpAddr,
}

/// Answers one request, or starts its Ping.
pub async fn handle<S: Transport>(
    mut x: Exchange<'_, S>,
    mut request: Request,
) -> std::io::Result<Routed> {
    let proxy = x.shared.upstream.is_some();
    if !request.path.eq_ignore_ascii_case(EAS_PATH) {
        return refuse(&mut x, &request, 404, "not an ActiveSync path", &[]).await;
    }
    let query = match (request.method, proxy) {
        (Method::Options | Method::Other, true) => return forward(x, request, None).await,
        (Method::Options, false) => {
            x.shared.count_http(200);
            x.stream.write_all(&response::options()).await?;
            return Ok(Routed::Done(request.keep_alive));
        }
        (Method::Other, false) => {
            let allow = [("Allow", "OPTIONS,POST".to_owned())];
            return refuse(&mut x, &request, 405, "use OPTIONS or POST", &allow).await;
        }
        // A declared body past the Ping cap is refused from the head, before anything costs.
        (Method::Post, false) if oversized(x.shared, &request) => {
            let err = too_large(x.shared);
            return refuse_unreadable(&mut x, err).await;
        }
        (Method::Post, _) => match EasRequest::parse_query(&request.query) {
            Ok(query) => query,
            // A command newer than this tier is still the upstream's to answer.
            Err(QueryError::UnknownCommand(_)) if proxy => return forward(x, request, None).await,
            Err(err @ QueryError::UnknownCommand(_)) => {
                return refuse(&mut x, &request, 501, &err.to_string(), &[]).await
            }
            Err(err) => {
                tracing::info!(reason = %err, "request refused: unusable query");
                return refuse(&mut x, &request, 400, &err.to_string(), &[]).await;
            }
        },
    };
    if query.command != Command::Ping && proxy {
        // The upstream authenticates what it serves.
        return forward(x, request, Some(&query)).await;
    }
    if oversized(x.shared, &request) {
        let err = too_large(x.shared);
        return refuse_unreadable(&mut x, err).await;
    }
    let mailbox = match authenticate(&mut x, &request, &query).await? {
        Ok(mailbox) => mailbox,
        Err(routed) => return Ok(routed),
    };
    if let Some(user) = &query.user {
        if dp_proto::ids::canonical_mailbox(user) != mailbox {
            tracing::info!(%mailbox, "request refused: credentials are not for the User parameter");
            let message = "credentials do not belong to User";
            return refuse(&mut x, &request, 403, message, &[]).await;
        }
    }
    if query.command != Command::Ping {
        let message = format!("{} is not served by this tier", query.command.name());
        return refuse(&mut x, &request, 501, &message, &[]).await;
    }
    let device = dp_proto::ids::device_key(&mailbox, &query.device_id);
    if let Err((limit, wait)) = x.shared.limits.pings.hit(&device, &mailbox) {
        x.shared.count_limited(limit);
        tracing::info!(%mailbox, device = %query.device_id, limit, "Ping refused: over the rate");
        let message = "too many Pings; retry later";
        return unavailable(&mut x, wait.as_secs(), message).await;
    }
    let (sizes, timeout) = (x.shared.config.sizes, x.shared.config.header_timeout);
    if let Err(err) = request::read_body(x.stream, x.buf, &mut request, sizes.body, timeout).await {
        return refuse_unreadable(&mut x, err).await;
    }
    Ok(Routed::Ping(
        ping::start(x.shared, &query, mailbox, device, &request).await,
    ))
}

/// The client the request is from: the peer, or what a trusted proxy says it forwards for.
fn client<S: Transport>(x: &Exchange<'_, S>, request: &Request) -> std::net::IpAddr {
    let trusted = &x.shared.config.trusted_proxies;
    trusted.client(x.peer, request.forwarded_for.as_deref())
}

fn oversized(shared: &Shared, request: &Request) -> bool {
    matches!(request.framing, Framing::Length(n) if n > shared.config.sizes.body as u64)
}

fn too_large(shared: &Shared) -> request::ReadError {
    request::ReadError::BodyTooLarge(shared.config.sizes.body)
}

/// The mailbox the credentials in the head are for, or the answer that refused them.
async fn authenticate<S: Transport>(
    x: &mut Exchange<'_, S>,
    request: &Request,
    query: &EasRequest,
) -> std::io::Result<Result<String, Routed>> {
    let shared = x.shared;
    if shared.config.upstream_auth {
        return vouched(x, request, query).await;
    }
    let authorization = request.authorization.as_deref();
    let refused = match shared
        .auth
        .authenticate(authorization, client(x, request), &shared.metrics)
        .await
    {
        Ok(mailbox) => return Ok(Ok(mailbox)),
        Err(AuthError::Missing | AuthError::Rejected) => {
            let challenge = [("WWW-Authenticate", shared.auth.challenge().to_owned())];
            refuse(x, request, 401, "credentials required", &challenge).await?
        }
        Err(AuthError::Throttled(wait)) => {
            shared.count_limited("auth_failures");
            let message = "too many failed logins; retry later";
            unavailable(x, wait.as_secs(), message).await?
        }
        Err(AuthError::Unavailable) => {
            let retry = shared.config.retry_after_secs.into();
            unavailable(x, retry, "accounts unavailable; retry later").await?
        }
    };
    Ok(Err(refused))
}

/// `AUTH_MODE=upstream`: the upstream's word on the credentials, its refusal passed on as it is.
async fn vouched<S: Transport>(
    x: &mut Exchange<'_, S>,
    request: &Request,
    query: &EasRequest,
) -> std::io::Result<Result<String, Routed>> {
    use crate::proxy::vouch::Verdict;
    let refused = match crate::proxy::vouch::authenticate(x.shared, request, query).await {
        Verdict::Accepted(mailbox) => return Ok(Ok(mailbox)),
        Verdict::Refused { status, headers } => {
            let message = "the ActiveSync server refused these credentials";
            refuse(x, request, status, message, &headers).await?
        }
        Verdict::Unavailable(reason) => {
            tracing::warn!(%reason, "credentials not checked: the ActiveSync server is unavailable");
            let retry = x.shared.config.retry_after_secs.into();
            unavailable(x, retry, "credentials cannot be checked now; retry later").await?
        }
    };
    Ok(Err(refused))
}

async fn forward<S: Transport>(
    x: Exchange<'_, S>,
    request: Request,
    query: Option<&EasRequest>,
) -> std::io::Result<Routed> {
    let keep = crate::proxy::forward(x.shared, x.stream, x.buf, request, query, x.peer).await?;
    Ok(Routed::Done(keep))
}

/// An error answer. The connection stays open for 401, 403, 404, 405 and 501 when the
/// request's body is small enough to read past (it is read and dropped); otherwise it closes.
async fn refuse<S: Transport>(
    x: &mut Exchange<'_, S>,
    request: &Request,
    code: u16,
    message: &str,
    headers: &[(&str, String)],
) -> std::io::Result<Routed> {
    let keep = matches!(code, 401 | 403 | 404 | 405 | 501) && skip_body(x, request).await;
    x.shared.count_http(code);
    x.stream
        .write_all(&response::error(code, message, headers, !keep))
        .await?;
    Ok(Routed::Done(keep))
}

/// Reads and drops a refused request's body, if it is small; whether that worked.
async fn skip_body<S: Transport>(x: &mut Exchange<'_, S>, request: &Request) -> bool {
    let (limit, timeout) = (x.shared.config.sizes.body, x.shared.config.header_timeout);
    request::body(x.stream, x.buf, request.framing, limit, timeout)
        .await
        .is_ok()
}

/// A Ping body that could not be read: its status, and the connection closes.
async fn refuse_unreadable<S: Transport>(
    x: &mut Exchange<'_, S>,
    err: request::ReadError,
) -> std::io::Result<Routed> {
    let Some((code, limit)) = err.answer() else {
        return Ok(Routed::Done(false));
    };
    if let Some(limit) = limit {
        x.shared.count_limited(limit);
    }
    tracing::info!(code, reason = %err, "request refused");
    x.shared.count_http(code);
    x.stream
        .write_all(&response::error(code, &err.to_string(), &[], true))
        .await?;
    Ok(Routed::Done(false))
}

/// 503 with Retry-After (at least a second); the connection closes.
async fn unavailable<S: Transport>(
    x: &mut Exchange<'_, S>,
    retry_after_secs: u64,
    message: &str,
) -> std::io::Result<Routed> {
    x.shared.count_http(503);
    let retry = u32::try_from(retry_after_secs).unwrap_or(u32::MAX).max(1);
    x.stream
        .write_all(&response::unavailable(retry, message))
        .await?;
    Ok(Routed::Done(false))
}
