//! One request to the upstream and its answer back, streamed: the device's body goes up piece
//! by piece while the upstream reads it, the answer comes down as the upstream sends it.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use dp_keyspace::{Device, SyncStart};
use dp_proto::query::{Command, EasRequest};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::body::{BodyError, BodyReader};
use super::headers;
use super::observe::{self, Tap};
use crate::http::request::{Framing, Request};
use crate::http::response;
use crate::transport::Transport;
use crate::Shared;

/// Who the request is for, when the proxy learns from it.
struct Learning {
    command: Command,
    mailbox: String,
    device_id: String,
    key: String,
    /// Sync: versions read before the upstream saw the request.
    start: Option<SyncStart>,
    /// FolderSync: the mailbox's hierarchy version read before the upstream saw the request.
    hierarchy: u64,
}

impl Learning {
    fn device(&self) -> Device<'_> {
        Device {
            mailbox: &self.mailbox,
            device_id: &self.device_id,
            key: &self.key,
        }
    }
}

/// Forwards `request` (its body still on the connection) and streams the answer back.
/// Returns whether the connection stays open.
pub async fn forward<S: Transport>(
    shared: &Arc<Shared>,
    stream: &mut S,
    buf: &mut Vec<u8>,
    request: Request,
    query: Option<&EasRequest>,
    peer: IpAddr,
) -> std::io::Result<bool> {
    let Some(upstream) = &shared.upstream else {
        return Ok(false);
    };
    let label = query.map_or("other", |q| q.command.name());
    if let Some(scheme) = connection_bound_auth(request.authorization.as_deref()) {
        return refuse_connection_bound(shared, stream, scheme, label).await;
    }
    let options = request.method == crate::http::request::Method::Options;
    if options && request.authorization.is_some() && request.framing == Framing::Length(0) {
        if let Some(answer) = upstream.options.answer(request.keep_alive) {
            shared.count_http(200);
            stream.write_all(&answer).await?;
            return Ok(request.keep_alive);
        }
    }
    let learning = learning(shared, &request, query).await;
    let (call, tx, mut request_tap) = upstream_call(shared, upstream, &request, &learning, peer);
    if request.expect_continue && request.framing != Framing::Length(0) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }

    let timeout = upstream.config.timeout;
    let send = async { tokio::time::timeout(timeout, call.send()).await };
    let mut reader = BodyReader::new(stream, buf, request.framing, shared.config.idle_timeout);
    let pump = pump(&mut reader, tx, &mut request_tap);
    let (pumped, sent) = tokio::join!(pump, send);
    let body_read = reader.is_done();
    if let Err(err) = &pumped {
        tracing::info!(command = label, reason = %err, "request body from the device failed");
    }
    let sent = sent
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))
        .and_then(|sent| sent.map_err(|err| error_chain(&err)));
    let answer = match sent {
        Ok(answer) => answer,
        Err(reason) => return unavailable(shared, stream, label, reason).await,
    };
    let status = answer.status();
    shared.metrics.proxied(label, status.as_u16());
    if options && request.authorization.is_some() {
        upstream.options.keep(&answer);
    }
    let keep_alive = request.keep_alive && body_read && pumped.is_ok();
    let gzip_response = has_gzip(&joined(answer.headers(), "content-encoding"));
    let mut response_tap = learning
        .as_ref()
        .filter(|_| status.as_u16() == 200)
        .and_then(|l| Tap::new(l.command, gzip_response));
    let streamed = stream_answer(stream, answer, keep_alive, timeout, &mut response_tap).await;
    // After the answer, not before: the device does not wait for this Redis round trip.
    if let (true, Some(query)) = (shared.config.upstream_auth, query) {
        super::vouch::record(shared, &request, query, status.as_u16()).await;
    }
    if let Err(reason) = streamed {
        tracing::info!(command = label, %reason, "answer from the upstream cut short");
        return Ok(false);
    }
    learn(shared, learning, request_tap, response_tap).await;
    Ok(keep_alive)
}

/// The body's way up: pieces sent here reach the upstream as the request's body.
type BodySender = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// The upstream request for `request`: its method, headers and (streamed) body, and a tap on
/// the body when the proxy learns from it.
fn upstream_call(
    shared: &Shared,
    upstream: &super::Upstream,
    request: &Request,
    learning: &Option<Learning>,
    peer: IpAddr,
) -> (reqwest::RequestBuilder, BodySender, Option<Tap>) {
    // The head is parsed once more here, for all its headers; the routing parse kept only some.
    let (method, incoming) = request.parts();
    let gzip_request = has_gzip(&headers::joined(
        "content-encoding",
        incoming.iter().copied(),
    ));
    let tap = learning
        .as_ref()
        .and_then(|l| Tap::new(l.command, gzip_request));
    let (method, outgoing) = outgoing_headers(shared, method, &incoming, peer);
    let mut call = upstream
        .client
        .request(method, upstream.url(&request.query))
        .headers(outgoing);
    let (tx, rx) = mpsc::channel(2);
    if request.framing != Framing::Length(0) {
        if let Framing::Length(n) = request.framing {
            call = call.header(reqwest::header::CONTENT_LENGTH, n);
        }
        let pieces = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        call = call.body(reqwest::Body::wrap_stream(pieces));
    } else if request.method == crate::http::request::Method::Post {
        call = call.header(reqwest::header::CONTENT_LENGTH, 0);
    }
    (call, tx, tap)
}

async fn refuse_connection_bound<S: Transport>(
    shared: &Shared,
    stream: &mut S,
    scheme: &str,
    label: &str,
) -> std::io::Result<bool> {
    tracing::info!(
        scheme,
        command = label,
        "request refused: connection-bound authentication"
    );
    shared.count_http(401);
    let message = format!(
        "{scheme} authentication is bound to one connection and cannot pass this proxy; \
         use Basic or a bearer token"
    );
    let challenge = [("WWW-Authenticate", "Basic realm=\"ActiveSync\"".to_owned())];
    stream
        .write_all(&response::error(401, &message, &challenge, true))
        .await?;
    Ok(false)
}

/// The upstream did not answer: 503, and the connection closes (its body may be half read).
async fn unavailable<S: Transport>(
    shared: &Shared,
    stream: &mut S,
    label: &str,
    reason: String,
) -> std::io::Result<bool> {
    shared.metrics.proxy.upstream_failures.inc();
    tracing::warn!(command = label, %reason, "upstream unavailable: 503");
    shared.count_http(503);
    let answer = response::unavailable(
        shared.config.retry_after_secs,
        "the ActiveSync server is unavailable; retry later",
    );
    stream.write_all(&answer).await?;
    Ok(false)
}

/// NTLM and Negotiate authenticate a TCP connection, not a request: through a pooled proxy
/// they would authenticate some other device's connection, or fail at random.
fn connection_bound_auth(authorization: Option<&str>) -> Option<&'static str> {
    let scheme = authorization?.split_whitespace().next()?;
    ["NTLM", "Negotiate"]
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(scheme))
}

/// The device a FolderSync or Sync is for; for a Sync, the versions before it starts.
async fn learning(
    shared: &Shared,
    request: &Request,
    query: Option<&EasRequest>,
) -> Option<Learning> {
    let query = query?;
    if !matches!(query.command, Command::FolderSync | Command::Sync) {
        return None;
    }
    let mailbox = observe::mailbox(request.authorization.as_deref(), query)?;
    let mut learning = Learning {
        command: query.command,
        key: dp_proto::ids::device_key(&mailbox, &query.device_id),
        device_id: query.device_id.clone(),
        mailbox,
        start: None,
        hierarchy: 0,
    };
    let mut redis = shared.redis.clone();
    if query.command == Command::FolderSync {
        let read = shared
            .store
            .hierarchy_version(&mut redis, &learning.mailbox);
        match tokio::time::timeout(shared.config.redis_timeout, read).await {
            Ok(Ok(version)) => learning.hierarchy = version,
            _ => {
                shared.metrics.redis_errors.inc();
                tracing::warn!(mailbox = %learning.mailbox, device = %learning.device_id, "FolderSync passes unobserved: Redis unavailable");
                return None;
            }
        }
    }
    if query.command == Command::Sync {
        let start = shared.store.sync_start(&mut redis, learning.device());
        match tokio::time::timeout(shared.config.redis_timeout, start).await {
            Ok(Ok(start)) => learning.start = Some(start),
            // Without the versions a Sync cannot acknowledge anything: its folders stay
            // reported (a duplicate Status 2, never a loss). The Sync itself goes on.
            _ => {
                shared.metrics.redis_errors.inc();
                tracing::warn!(mailbox = %learning.mailbox, device = %learning.device_id, "Sync passes unobserved: Redis unavailable");
                return None;
            }
        }
    }
    Some(learning)
}

/// What a Sync or FolderSync answered whole teaches: both taps read to the end, or nothing.
async fn learn(
    shared: &Shared,
    learning: Option<Learning>,
    asked: Option<Tap>,
    answered: Option<Tap>,
) {
    let (Some(learning), Some(asked), Some(answered)) = (learning, asked, answered) else {
        return;
    };
    let (Some(asked), Some(answered)) = (asked.finish(), answered.finish()) else {
        return;
    };
    match (&learning.start, learning.command) {
        (Some(start), Command::Sync) => {
            observe::sync(shared, learning.device(), start, &asked, &answered).await
        }
        (_, Command::FolderSync) => {
            let device = learning.device();
            observe::folder_sync(shared, device, learning.hierarchy, &asked, &answered).await
        }
        _ => {}
    }
}

/// Hands the device's body to the upstream piece by piece, reading a copy on the way.
async fn pump<S: Transport>(
    reader: &mut BodyReader<'_, S>,
    tx: BodySender,
    tap: &mut Option<Tap>,
) -> Result<(), BodyError> {
    loop {
        match reader.next().await {
            Ok(Some(piece)) => {
                if let Some(tap) = tap {
                    tap.feed(&piece);
                }
                // The upstream answered without reading the rest: the connection cannot be
                // reused, as the rest of the body is still on it.
                if tx.send(Ok(piece)).await.is_err() {
                    return Err(BodyError::Framing("the upstream stopped reading the body"));
                }
            }
            Ok(None) => return Ok(()),
            Err(err) => {
                let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                return Err(err);
            }
        }
    }
}

/// The method and the headers that go up: the device's end-to-end headers as they came, and
/// where the request came from.
fn outgoing_headers(
    shared: &Shared,
    method: &str,
    incoming: &[(&str, &[u8])],
    peer: IpAddr,
) -> (reqwest::Method, reqwest::header::HeaderMap) {
    let connection = headers::joined("connection", incoming.iter().copied());
    let mut out = reqwest::header::HeaderMap::with_capacity(incoming.len() + 2);
    let mut forwarded_for = None;
    for &(name, value) in incoming {
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = Some(String::from_utf8_lossy(value).into_owned());
            continue;
        }
        if !headers::crosses(name, &connection) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value),
        ) {
            out.append(name, value);
        }
    }
    let chain = match forwarded_for {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&chain) {
        out.insert("x-forwarded-for", value);
    }
    let proto = if shared.tls.is_some() {
        "https"
    } else {
        "http"
    };
    out.insert(
        "x-forwarded-proto",
        reqwest::header::HeaderValue::from_static(proto),
    );
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
    (method, out)
}

/// Writes the upstream's answer to the device: its status and end-to-end headers unchanged,
/// its body as it arrives (by Content-Length when the upstream gave one, else chunked).
async fn stream_answer<S: Transport>(
    stream: &mut S,
    mut answer: reqwest::Response,
    keep_alive: bool,
    timeout: std::time::Duration,
    tap: &mut Option<Tap>,
) -> Result<(), String> {
    let status = answer.status();
    let connection = joined(answer.headers(), "connection");
    let length = answer
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = status.is_informational() || status.as_u16() == 204 || status.as_u16() == 304;
    let chunked = length.is_none() && !bodiless;
    let head = answer_head(&answer, &connection, length, chunked, keep_alive);
    stream.write_all(&head).await.map_err(|e| e.to_string())?;
    loop {
        let piece = match tokio::time::timeout(timeout, answer.chunk()).await {
            Err(_) => return Err(format!("the upstream sent nothing for {timeout:?}")),
            Ok(Err(err)) => return Err(error_chain(&err)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(piece))) => piece,
        };
        if let Some(tap) = tap {
            tap.feed(&piece);
        }
        if chunked {
            let size = format!("{:x}\r\n", piece.len());
            stream
                .write_all(size.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
        stream.write_all(&piece).await.map_err(|e| e.to_string())?;
        if chunked {
            stream.write_all(b"\r\n").await.map_err(|e| e.to_string())?;
        }
    }
    if chunked {
        stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
    }
    stream.flush().await.map_err(|e| e.to_string())
}

/// The answer's status line and headers as they go to the device: the upstream's end-to-end
/// headers, its framing or chunked, and `Connection: close` when the connection ends.
fn answer_head(
    answer: &reqwest::Response,
    connection: &[u8],
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let status = answer.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown")
    )
    .into_bytes();
    for (name, value) in answer.headers() {
        if headers::crosses(name.as_str(), connection) {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
    }
    match (length, chunked) {
        (Some(n), _) => head.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        (None, true) => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        (None, false) => {}
    }
    if !keep_alive {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn joined(headers: &reqwest::header::HeaderMap, name: &str) -> Vec<u8> {
    let values = headers.get_all(name).iter().map(|v| (name, v.as_bytes()));
    headers::joined(name, values)
}

fn has_gzip(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"gzip"))
}

/// An error with its causes, for a log line that says why.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
