//! The Ping command: validate, claim, answer at once or park until news, eviction, heartbeat,
//! drain or the client leaving; then write the answer, acknowledge what was reported, and
//! record the history row.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dp_db::history::HistoryRow;
use dp_keyspace::{Check, Claim, Device, Owner};
use dp_proto::events::{EvictEvent, FolderVersion};
use dp_proto::ids::device_key;
use dp_proto::ping::{PingFolder, PingRequest, PingResponse};
use dp_proto::query::EasRequest;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::request::{Request, MAX_HEAD};
use crate::http::response;
use crate::metrics::OutcomeLabels;
use crate::parked::End;
use crate::Shared;

/// Owner records outlive the heartbeat by this much, so clock skew between pods and the
/// watcher never hides a parked Ping from a wake.
const OWNER_GRACE: Duration = Duration::from_secs(30);

/// How a Ping ended, before its answer is written.
struct Finished {
    response: PingResponse,
    outcome: &'static str,
    /// Versions to acknowledge once the Status 2 is written.
    reported: Vec<FolderVersion>,
    accepted_at_us: Option<u64>,
    heartbeat: Option<u32>,
}

impl Finished {
    fn new(response: PingResponse, outcome: &'static str) -> Self {
        Finished {
            response,
            outcome,
            reported: Vec::new(),
            accepted_at_us: None,
            heartbeat: None,
        }
    }

    fn changes(reported: Vec<FolderVersion>, accepted_at_us: Option<u64>) -> Self {
        let ids = reported.iter().map(|v| v.id.clone()).collect();
        Finished {
            reported,
            accepted_at_us,
            ..Finished::new(PingResponse::changes(ids), "changed")
        }
    }
}

/// The device closed its connection while parked.
struct ClientGone;

pub async fn serve(
    shared: &Arc<Shared>,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    query: &EasRequest,
    mailbox: String,
    request: &Request,
) -> std::io::Result<bool> {
    let started_at = Utc::now();
    let started = Instant::now();
    let request_id = shared.next_request_id();
    let key = device_key(&mailbox, &query.device_id);
    let device = Device {
        mailbox: &mailbox,
        device_id: &query.device_id,
        key: &key,
    };
    let body = PingRequest::parse(&request.body);
    let requested_heartbeat = body.as_ref().ok().and_then(|b| b.heartbeat);
    let ended = match body {
        Err(err) => {
            tracing::info!(%mailbox, device = %query.device_id, reason = %err, "Ping refused: Status 4");
            Ok(Finished::new(PingResponse::syntax_error(), "rejected"))
        }
        Ok(ping) => match ping.check(&shared.config.limits) {
            Err(answer) => Ok(Finished::new(answer, "rejected")),
            Ok(()) => park(shared, stream, buf, device, request_id, &ping, started).await,
        },
    };
    let mut row = HistoryRow {
        started_at,
        ended_at: started_at,
        mailbox: mailbox.clone(),
        device_id: query.device_id.clone(),
        device_type: query.device_type.clone(),
        pod: shared.config.pod.clone(),
        request_id,
        requested_heartbeat,
        effective_heartbeat: None,
        outcome: "client_gone",
        status: None,
        changed_folders: Vec::new(),
        protocol_version: request
            .protocol_version
            .clone()
            .or_else(|| query.version.map(|v| v.as_str().to_owned())),
        user_agent: request.user_agent.clone(),
    };
    let keep_alive = match ended {
        Err(ClientGone) => {
            count(shared, "client_gone", "");
            false
        }
        Ok(finished) => {
            let written = answer(shared, stream, device, &finished, request.keep_alive).await;
            row.outcome = finished.outcome;
            row.status = Some(finished.response.status.code());
            row.effective_heartbeat = finished.heartbeat;
            row.changed_folders = finished.response.folders;
            written? && request.keep_alive
        }
    };
    row.ended_at = Utc::now();
    shared.history.record(row);
    Ok(keep_alive)
}

fn count(shared: &Shared, outcome: &'static str, status: &'static str) {
    shared
        .metrics
        .pings
        .get_or_create(&OutcomeLabels { outcome, status })
        .inc();
}

const STATUS_LABELS: [&str; 9] = ["0", "1", "2", "3", "4", "5", "6", "7", "8"];

/// Writes the answer; after a Status 2 is out, records what the device was told (I2) and how
/// long the wake took.
async fn answer(
    shared: &Shared,
    stream: &mut TcpStream,
    device: Device<'_>,
    finished: &Finished,
    keep_alive: bool,
) -> std::io::Result<bool> {
    let status = finished.response.status.code();
    count(
        shared,
        finished.outcome,
        STATUS_LABELS[usize::from(status).min(8)],
    );
    shared.count_http(200);
    stream
        .write_all(&response::wbxml(&finished.response.encode(), keep_alive))
        .await?;
    if let Some(accepted) = finished.accepted_at_us {
        let latency = dp_runtime::now_us().saturating_sub(accepted);
        shared.metrics.wake_latency.observe(latency as f64 / 1e6);
    }
    if !finished.reported.is_empty() {
        let mut redis = shared.redis.clone();
        let ack = shared.store.ack(&mut redis, device, &finished.reported);
        match tokio::time::timeout(shared.config.redis_timeout, ack).await {
            Ok(Ok(())) => {}
            // Not acknowledged means the device hears of it again: a duplicate, never a loss.
            _ => {
                shared.metrics.redis_errors.inc();
                tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, "Status 2 not acknowledged in Redis; the device will hear of it again");
            }
        }
    }
    Ok(true)
}

/// Removes the registration however the park ends (answer, client gone, cancelled).
struct Registration<'a> {
    shared: &'a Shared,
    device: &'a str,
    request: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.parked.remove(self.device, self.request);
        self.shared.metrics.parked.dec();
    }
}

async fn park(
    shared: &Arc<Shared>,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    device: Device<'_>,
    request_id: u64,
    ping: &PingRequest,
    started: Instant,
) -> Result<Finished, ClientGone> {
    let limits = shared.config.limits;
    // Registered before the claim: a wake that follows the claim finds the slot.
    let slot = shared.parked.register(device.key, request_id);
    shared.metrics.parked.inc();
    let _registration = Registration {
        shared,
        device: device.key,
        request: request_id,
    };
    let longest = ping.heartbeat.unwrap_or(limits.max_heartbeat);
    let owner = Owner {
        pod: shared.config.pod.clone(),
        request: request_id,
        expiry_ms: dp_runtime::now_ms()
            + u64::from(longest) * 1000
            + OWNER_GRACE.as_millis() as u64,
    };
    let mut redis = shared.redis.clone();
    let claim = shared.store.claim(&mut redis, device, &owner, ping);
    let (heartbeat, folders, changed) =
        match tokio::time::timeout(shared.config.redis_timeout, claim).await {
            Ok(Ok(Claim::MissingParameters)) => {
                return Ok(Finished::new(
                    PingResponse::missing_parameters(),
                    "rejected",
                ))
            }
            Ok(Ok(Claim::Claimed {
                previous,
                heartbeat,
                folders,
                changed,
            })) => {
                if let Some(previous) = previous {
                    evict(shared, device.key, &previous, request_id).await;
                }
                // A cached heartbeat may predate today's limits.
                (
                    heartbeat.clamp(limits.min_heartbeat, limits.max_heartbeat),
                    folders,
                    changed,
                )
            }
            Ok(Err(err)) => return Ok(redis_failed(shared, device, &err.to_string())),
            Err(_) => return Ok(redis_failed(shared, device, "timed out")),
        };
    let with_heartbeat = |mut finished: Finished| {
        finished.heartbeat = Some(heartbeat);
        finished
    };
    if !changed.is_empty() {
        return Ok(with_heartbeat(Finished::changes(changed, None)));
    }
    let deadline = started + Duration::from_secs(heartbeat.into());
    loop {
        tokio::select! {
            signals = slot.next() => {
                if let Some(end) = signals.end {
                    let outcome = match end {
                        End::Superseded => "superseded",
                        End::Drained => "drained",
                    };
                    return Ok(with_heartbeat(Finished::new(PingResponse::expired(), outcome)));
                }
                let mut news = monitored(&folders, signals.changes);
                if signals.recheck {
                    match recheck(shared, device, &owner, &folders).await {
                        Some(Check::Superseded) => {
                            return Ok(with_heartbeat(Finished::new(PingResponse::expired(), "superseded")));
                        }
                        Some(Check::Changed(found)) => news.extend(found),
                        None => {}
                    }
                }
                if !news.is_empty() {
                    return Ok(with_heartbeat(Finished::changes(dedupe(news), signals.accepted_at_us)));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(with_heartbeat(Finished::new(PingResponse::expired(), "expired")));
            }
            () = client_gone(stream, buf) => return Err(ClientGone),
        }
    }
}

fn redis_failed(shared: &Shared, device: Device<'_>, reason: &str) -> Finished {
    shared.metrics.redis_errors.inc();
    tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, reason, "Redis unavailable: Status 8");
    Finished::new(PingResponse::server_error(), "error")
}

/// Ends the device's previous Ping wherever it is parked.
async fn evict(shared: &Shared, device: &str, previous: &Owner, request_id: u64) {
    if previous.pod == shared.config.pod {
        if previous.request != request_id {
            shared
                .parked
                .tell(device, previous.request, |s| s.end = Some(End::Superseded));
        }
        return;
    }
    let event = EvictEvent {
        device: device.to_owned(),
        request: previous.request,
    };
    let Ok(payload) = serde_json::to_vec(&event) else {
        return;
    };
    let subject = shared.subjects.evict(&previous.pod);
    match shared.nats.publish(subject, payload.into()).await {
        Ok(()) => {
            shared.metrics.evictions_sent.inc();
        }
        // The old Ping then ends at its heartbeat; I1 does not depend on eviction.
        Err(err) => tracing::warn!(error = %err, pod = %previous.pod, "eviction not sent"),
    }
}

/// The changes that concern a monitored folder.
fn monitored(folders: &[PingFolder], changes: Vec<FolderVersion>) -> Vec<FolderVersion> {
    changes
        .into_iter()
        .filter(|change| folders.iter().any(|f| f.id == change.id))
        .collect()
}

/// One entry per folder, at its highest version.
fn dedupe(mut news: Vec<FolderVersion>) -> Vec<FolderVersion> {
    news.sort_by(|a, b| a.id.cmp(&b.id).then(b.version.cmp(&a.version)));
    news.dedup_by(|later, earlier| later.id == earlier.id);
    news
}

async fn recheck(
    shared: &Shared,
    device: Device<'_>,
    owner: &Owner,
    folders: &[PingFolder],
) -> Option<Check> {
    // Bounded, so a reconnect with a hundred thousand parked Pings does not flood Redis.
    let _permit = shared.rechecks.acquire().await.ok()?;
    let mut redis = shared.redis.clone();
    let ids = folders.iter().map(|f| f.id.as_str());
    let check = shared.store.check(&mut redis, device, owner, ids);
    match tokio::time::timeout(shared.config.redis_timeout, check).await {
        Ok(Ok(check)) => Some(check),
        _ => {
            shared.metrics.redis_errors.inc();
            tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, "re-check failed; the Ping stays parked");
            None
        }
    }
}

/// Completes when the client closes the connection. Bytes it sends meanwhile (a pipelined
/// request) are kept for after the answer, up to the head limit.
async fn client_gone(stream: &TcpStream, buf: &mut Vec<u8>) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut chunk = [0u8; 512];
        match stream.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_HEAD {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
