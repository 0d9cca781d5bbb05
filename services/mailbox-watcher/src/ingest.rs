//! `POST /v1/changes`: one change or a JSON array of them; 202 only once every one is durable
//! in JetStream. `PUT /v1/ox` takes the same changes as Dovecot's OX push driver sends them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use tracing::Instrument;

use async_nats::jetstream::context::PublishErrorKind;
use base64::Engine as _;
use bytes::Bytes;
use dp_proto::events::ChangeEvent;
use dp_proto::ids::canonical_mailbox;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::metrics::CodeLabels;
use crate::Shared;

/// How long the ingest API waits for JetStream to acknowledge before answering 503.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;
/// How long a client may take to send a body, once its token is checked.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/changes", post(changes))
        .route(
            "/v1/ox",
            put(crate::ox::notification).post(crate::ox::notification),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

pub(crate) fn answer(shared: &Shared, code: StatusCode, body: serde_json::Value) -> Response {
    shared
        .metrics
        .ingest_requests
        .get_or_create(&CodeLabels {
            code: code.as_u16(),
        })
        .inc();
    (code, Json(body)).into_response()
}

/// Compares digests, so the time taken does not tell how much of the token matched.
fn token_matches(expected: &str, given: &str) -> bool {
    Sha256::digest(expected.as_bytes()) == Sha256::digest(given.as_bytes())
}

/// The body, read only once the caller is known: whole, within `MAX_BODY` and `BODY_TIMEOUT`;
/// else the answer that refuses it.
pub(crate) async fn read_body(shared: &Shared, body: Body) -> Result<Bytes, Box<Response>> {
    let (code, reason) =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(bytes)) => return Ok(bytes),
            Ok(Err(err)) => {
                let err = err.into_inner();
                if err.is::<http_body_util::LengthLimitError>() {
                    let reason = format!("body over {MAX_BODY} bytes");
                    (StatusCode::PAYLOAD_TOO_LARGE, reason)
                } else {
                    (StatusCode::BAD_REQUEST, format!("body unreadable: {err}"))
                }
            }
            Err(_) => {
                let reason = format!("body not sent within {} s", BODY_TIMEOUT.as_secs());
                (StatusCode::REQUEST_TIMEOUT, reason)
            }
        };
    tracing::info!(%reason, "ingest request refused");
    Err(Box::new(answer(shared, code, json!({ "error": reason }))))
}

/// One ingest request, traced as a child of the caller's `traceparent` when it sends one.
async fn changes(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let span = tracing::info_span!("ingest changes", otel.kind = "server");
    let caller = headers
        .get(dp_runtime::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    dp_runtime::telemetry::set_parent(&span, caller);
    accept(shared, headers, body).instrument(span).await
}

/// Whether the request carries the ingest token: as a bearer token, or as the password of
/// Basic credentials (what Dovecot's OX driver sends from its URL's user part).
pub(crate) fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(expected) = &shared.config.ingest_token else {
        return false;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(given) = value.strip_prefix("Bearer ") {
        return token_matches(expected, given.trim());
    }
    let password = value
        .strip_prefix("Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()));
    password.is_some_and(|given| token_matches(expected, &given))
}

pub(crate) fn unauthorised(shared: &Shared) -> Response {
    let mut response = answer(
        shared,
        StatusCode::UNAUTHORIZED,
        json!({"error": "a valid bearer token is required"}),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn accept(shared: Arc<Shared>, headers: HeaderMap, body: Body) -> Response {
    if !authorised(&shared, &headers) {
        return unauthorised(&shared);
    }
    let body = match read_body(&shared, body).await {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let changes = match parse(&body, shared.config.max_batch) {
        Ok(changes) => changes,
        Err(reason) => {
            tracing::info!(%reason, "ingest request refused");
            return answer(&shared, StatusCode::BAD_REQUEST, json!({ "error": reason }));
        }
    };
    durable(&shared, changes).await
}

/// Publishes the changes and answers 202 once JetStream holds every one, else 503.
pub(crate) async fn durable(shared: &Shared, changes: Vec<ChangeEvent>) -> Response {
    match publish(shared, changes).await {
        Ok(accepted) => {
            shared.metrics.changes_accepted.inc_by(accepted as u64);
            answer(
                shared,
                StatusCode::ACCEPTED,
                json!({ "accepted": accepted }),
            )
        }
        Err(reason) => {
            tracing::warn!(%reason, "changes not made durable; answering 503");
            let mut response = answer(
                shared,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": format!("not durable: {reason}") }),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
    }
}

/// One change or an array of them, each valid.
fn parse(body: &[u8], max_batch: usize) -> Result<Vec<ChangeEvent>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    if items.is_empty() {
        return Err("empty batch".into());
    }
    if items.len() > max_batch {
        return Err(format!(
            "batch of {} is over the limit of {max_batch}",
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut change: ChangeEvent =
                serde_json::from_value(item).map_err(|e| format!("change {i}: {e}"))?;
            change.validate().map_err(|e| format!("change {i}: {e}"))?;
            change.mailbox = canonical_mailbox(&change.mailbox);
            Ok(change)
        })
        .collect()
}

/// Wakes what it can at once (WAKE_AT_INGEST), then writes every change to JetStream (those
/// woken to the woken stream, the others to the dispatchers') and returns once JetStream holds
/// them all.
pub(crate) async fn publish(
    shared: &Shared,
    mut changes: Vec<ChangeEvent>,
) -> Result<usize, String> {
    let accepted_at = dp_runtime::now_us();
    for change in &mut changes {
        change.accepted_at_us = Some(accepted_at);
    }
    let woken = shared.at_ingest.wake(shared, &changes, accepted_at).await;
    let written = write(shared, &changes, woken).await;
    shared.at_ingest.stream_answered(written.is_ok());
    written
}

async fn write(
    shared: &Shared,
    changes: &[ChangeEvent],
    woken: Vec<bool>,
) -> Result<usize, String> {
    // The dispatcher continues this request's trace from the message header.
    let trace = crate::trace_headers();
    // How many changes of the request after each are left for the dispatcher.
    let mut follows = woken.iter().filter(|w| !**w).count();
    let mut pending = Vec::with_capacity(changes.len());
    for (change, woken) in changes.iter().zip(woken) {
        let payload = serde_json::to_vec(change).map_err(|e| e.to_string())?;
        let mut headers = trace.clone().unwrap_or_default();
        let subject = if woken {
            shared.subjects.woken(&change.mailbox)
        } else {
            follows -= 1;
            if follows > 0 {
                // The dispatcher waits for the rest of a batch it knows is coming.
                headers.insert(crate::FOLLOWS, follows.to_string().as_str());
            }
            shared.subjects.change(&change.mailbox)
        };
        let published = match headers.iter().next() {
            None => shared.jetstream.publish(subject, payload.into()).await,
            Some(_) => {
                shared
                    .jetstream
                    .publish_with_headers(subject, headers, payload.into())
                    .await
            }
        };
        let ack = published.map_err(|e| e.to_string())?;
        pending.push(async move { (woken, ack.await) });
    }
    let Ok(acks) = tokio::time::timeout(DURABLE_TIMEOUT, futures::future::join_all(pending)).await
    else {
        return Err("JetStream did not acknowledge in time".into());
    };
    let mut failure = None;
    let mut woken_stream_missing = false;
    for (woken, ack) in acks {
        if let Err(err) = ack {
            woken_stream_missing |= woken && err.kind() == PublishErrorKind::StreamNotFound;
            failure.get_or_insert_with(|| err.to_string());
        }
    }
    if woken_stream_missing && shared.at_ingest.woken_stream_missing() {
        // Bounded: the request is failing already, and must not wait long to say so.
        let restore = crate::restore_woken_stream(shared);
        let _ = tokio::time::timeout(Duration::from_secs(2), restore).await;
    }
    failure.map_or(Ok(changes.len()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_bodies() {
        let one = parse(br#"{"mailbox":"Alice@Example.com","folders":["5"]}"#, 10).expect("one");
        assert_eq!(one[0].mailbox, "alice@example.com", "canonical");
        let two = parse(br#"[{"mailbox":"a","folders":["1"]},{"mailbox":"b","folders":["2"],"kind":"modified"}]"#, 10)
            .expect("batch");
        assert_eq!(two.len(), 2);
        assert!(parse(b"[]", 10).is_err());
        assert!(parse(b"{", 10).expect_err("refused").contains("not JSON"));
        assert!(parse(br#"{"mailbox":"","folders":["1"]}"#, 10)
            .expect_err("refused")
            .contains("change 0"));
        assert!(parse(
            br#"[{"mailbox":"a","folders":["1"]},{"mailbox":"a","folders":["1"]}]"#,
            1
        )
        .expect_err("refused")
        .contains("over the limit"));
        assert!(token_matches("abcdefghijklmnop", "abcdefghijklmnop"));
        assert!(!token_matches("abcdefghijklmnop", "abcdefghijklmnoq"));
    }
}
