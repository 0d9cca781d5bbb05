//! From request to decision: validate, claim in Redis, then answer at once or park.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dp_keyspace::{Claim, Device, Owner};
use dp_proto::events::{EvictEvent, FolderVersion};
use dp_proto::ping::{PingRequest, PingResponse};
use dp_proto::query::EasRequest;

use super::{Context, Finished, Held, Registration, Started, Waiting};
use crate::http::request::Request;
use crate::parked::End;
use crate::Shared;

/// Owner records outlive the heartbeat by this much, so clock skew between pods and the
/// watcher never hides a parked Ping from a wake.
const OWNER_GRACE: Duration = Duration::from_secs(30);
/// Longest User-Agent kept in the history and the devices table (characters).
const MAX_USER_AGENT: usize = 256;

/// Proxy mode: Status 2 answers in a row without a Sync before the next one is held back.
/// Exchange answers a second Ping with no Sync between with Status 2 again; a device that
/// never syncs must not make that a tight loop (I2).
const REPEATS_BEFORE_BACKOFF: u32 = 3;

/// How long the next report is held back after `repeats` unsynced ones: 10 s, doubling, at
/// most 5 minutes (and never past the heartbeat, I4).
fn backoff(repeats: u32) -> Duration {
    let doublings = repeats.saturating_sub(REPEATS_BEFORE_BACKOFF).min(5);
    Duration::from_secs(10 << doublings).min(Duration::from_secs(300))
}

/// Validates, claims, and answers at once or parks.
pub async fn start(
    shared: &Arc<Shared>,
    query: &EasRequest,
    mailbox: String,
    key: String,
    request: &Request,
) -> Started {
    let body = PingRequest::parse(&request.body);
    let age = request.age();
    let context = Context {
        key: key.into(),
        mailbox,
        device_id: query.device_id.clone(),
        device_type: query.device_type.clone(),
        request_id: shared.next_request_id(),
        // The device's clock started when it sent the request: a heartbeat counted from after
        // a slow authentication would end later than the device waits, and a Status 2 written
        // then would go to a device that had given up, yet look heard (I2, `finish::acknowledge`).
        started_at: Utc::now() - chrono::Duration::from_std(age).unwrap_or_default(),
        started: tokio::time::Instant::now()
            .checked_sub(age)
            .unwrap_or_else(tokio::time::Instant::now),
        requested_heartbeat: body.as_ref().ok().and_then(|b| b.heartbeat),
        protocol_version: request
            .protocol_version
            .clone()
            .or_else(|| query.version.map(|v| v.as_str().to_owned())),
        // Kept in the history and the devices table: bounded, whatever a client sends.
        user_agent: request
            .user_agent
            .as_deref()
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect()),
        keep_alive: request.keep_alive,
    };
    let ping = match body {
        Ok(ping) => ping,
        Err(err) => {
            tracing::info!(mailbox = %context.mailbox, device = %context.device_id, reason = %err, "Ping refused: Status 4");
            return Started::answer(
                context,
                Finished::new(PingResponse::syntax_error(), "rejected"),
            );
        }
    };
    if let Err(answer) = ping.check(&shared.config.limits) {
        return Started::answer(context, Finished::new(answer, "rejected"));
    }
    let credentials = crate::proxy::probe::Credentials::of(shared, request, query);
    claim(shared, context, &ping, credentials).await
}

async fn claim(
    shared: &Arc<Shared>,
    context: Context,
    ping: &PingRequest,
    credentials: Option<Box<crate::proxy::probe::Credentials>>,
) -> Started {
    let mut waiting = registered(shared, context, ping);
    let mut redis = shared.redis.clone();
    // With replicas to wait for, a claim not on them in time answers like a Redis error.
    let claimed = shared.store.claim(
        &mut redis,
        waiting.context.device(),
        &waiting.owner,
        ping,
        dp_runtime::now_ms(),
        shared.mode(),
    );
    let claim = match tokio::time::timeout(shared.config.redis_timeout, claimed).await {
        Ok(Ok(claim)) => claim,
        Ok(Err(err)) => {
            let failed = redis_failed(shared, waiting.context.device(), &err.to_string());
            return answer_now(waiting, failed);
        }
        Err(_) => {
            let failed = redis_failed(shared, waiting.context.device(), "timed out");
            return answer_now(waiting, failed);
        }
    };
    let changed = match claim {
        Claim::Claimed {
            previous,
            heartbeat,
            folders,
            changed,
            repeats,
            hierarchy_known,
            fresh,
        } => {
            let changed = news(shared, &waiting.context, changed, fresh).await;
            waiting.probe = credentials.map(|c| c.every(shared, hierarchy_known));
            crate::pinged::mark(shared, &waiting.context.mailbox, waiting.owner.expiry_ms);
            if let Some(previous) = previous {
                let (key, id) = (&waiting.context.key, waiting.context.request_id);
                evict(shared, key, &previous, id).await;
            }
            // A cached heartbeat may predate today's limits.
            let limits = shared.config.limits;
            waiting.heartbeat = heartbeat.clamp(limits.min_heartbeat, limits.max_heartbeat);
            waiting.folders = folders;
            if repeats >= REPEATS_BEFORE_BACKOFF && !changed.is_empty() {
                hold_back(shared, &mut waiting, changed, repeats);
                return park(waiting);
            }
            changed
        }
        Claim::TooManyDevices => {
            let finished = too_many_devices(shared, &waiting.context);
            return answer_now(waiting, finished);
        }
        Claim::MissingParameters => {
            let finished = Finished::new(PingResponse::missing_parameters(), "rejected");
            return answer_now(waiting, finished);
        }
        Claim::HierarchyChanged { previous } => {
            let finished = hierarchy_changed(shared, &waiting.context, previous).await;
            return answer_now(waiting, finished);
        }
    };
    if changed.is_empty() {
        return park(waiting);
    }
    let mut finished = Finished::changes(changed, None);
    finished.heartbeat = Some(waiting.heartbeat);
    answer_now(waiting, finished)
}

fn too_many_devices(shared: &Shared, context: &Context) -> Finished {
    shared.count_limited("devices_per_mailbox");
    tracing::warn!(mailbox = %context.mailbox, device = %context.device_id, max = shared.config.max_devices_per_mailbox, "Ping refused: the mailbox has state for MAX_DEVICES_PER_MAILBOX devices");
    Finished {
        http: Some(503),
        ..Finished::new(PingResponse::server_error(), "too_many_devices")
    }
}

async fn hierarchy_changed(
    shared: &Shared,
    context: &Context,
    previous: Option<Owner>,
) -> Finished {
    if let Some(previous) = previous {
        evict(shared, &context.key, &previous, context.request_id).await;
    }
    tracing::info!(mailbox = %context.mailbox, device = %context.device_id, "Ping names a folder outside the device's hierarchy: Status 7");
    Finished::new(PingResponse::folder_sync_required(), "hierarchy")
}

/// The Ping, registered in the pod's index before its claim: a wake that follows the claim
/// finds the slot.
fn registered(shared: &Arc<Shared>, context: Context, ping: &PingRequest) -> Waiting {
    let limits = shared.config.limits;
    let slot = shared
        .parked
        .register(context.key.clone(), context.request_id);
    if shared
        .state
        .draining
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        slot.tell(|s| s.end = Some(End::Drained));
    }
    let longest = ping.heartbeat.unwrap_or(limits.max_heartbeat);
    let owner = Owner {
        pod: shared.config.common.pod.clone(),
        request: context.request_id,
        expiry_ms: dp_runtime::now_ms()
            + u64::from(longest) * 1000
            + OWNER_GRACE.as_millis() as u64,
    };
    Waiting {
        registration: Registration {
            shared: shared.clone(),
            key: context.key.clone(),
            request: context.request_id,
            counted: false,
        },
        slot,
        context,
        owner,
        heartbeat: 0,
        folders: Vec::new(),
        held: None,
        probe: None,
    }
}

/// What a claim's news is worth: when Redis held nothing for the device, it is new (its
/// folders' versions are baselines, not news) or forgotten in a loss of Redis state (they are
/// news, I1).
async fn news(
    shared: &Shared,
    context: &Context,
    changed: Vec<FolderVersion>,
    fresh: bool,
) -> Vec<FolderVersion> {
    if !fresh {
        return changed;
    }
    match crate::epoch::predates_loss(shared, &context.mailbox, &context.device_id).await {
        true => changed,
        false => Vec::new(),
    }
}

/// Proxy mode, a device that keeps skipping its Sync: parked with the news, to be told at the
/// backoff or with newer news (I2).
fn hold_back(shared: &Shared, waiting: &mut Waiting, pending: Vec<FolderVersion>, repeats: u32) {
    shared.metrics.proxy.repeat_backoffs.inc();
    let delay = backoff(repeats).min(Duration::from_secs(waiting.heartbeat.into()));
    waiting.held = Some(Box::new(Held {
        pending,
        at: waiting.context.started + delay,
    }));
}

/// Parks the claimed Ping: from now on it counts as parked.
fn park(mut waiting: Waiting) -> Started {
    waiting.registration.shared.metrics.parked.inc();
    waiting.registration.counted = true;
    Started::Parked(Box::new(waiting))
}

/// Ends the registration and hands the context on for the answer.
fn answer_now(waiting: Waiting, finished: Finished) -> Started {
    let Waiting { context, .. } = waiting;
    Started::answer(context, finished)
}

fn redis_failed(shared: &Shared, device: Device<'_>, reason: &str) -> Finished {
    shared.metrics.redis_errors.inc();
    tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, reason, "Redis unavailable: Status 8");
    Finished::new(PingResponse::server_error(), "error")
}

/// Ends the device's previous Ping wherever it is parked.
async fn evict(shared: &Shared, device: &str, previous: &Owner, request_id: u64) {
    if previous.pod == shared.config.common.pod {
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
