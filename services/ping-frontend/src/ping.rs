//! The Ping command in three steps, so that a parked connection keeps only what it needs:
//! [`start`] validates, claims and either answers at once or parks; [`wait`] is the parked
//! state (a small future: a signal, the heartbeat, or the client leaving); [`finish`] writes
//! the answer, acknowledges what was reported, and records the history row.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dp_db::history::HistoryRow;
use dp_keyspace::{Check, Claim, Device, Owner};
use dp_proto::events::{EvictEvent, FolderVersion};
use dp_proto::ping::{PingFolder, PingRequest, PingResponse};
use dp_proto::query::EasRequest;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::delivery::Unconfirmed;
use crate::http::request::Request;
use crate::http::response;
use crate::metrics::OutcomeLabels;
use crate::parked::{End, Slot, WakeClock};
use crate::transport::Transport;
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

/// Who is pinging, and what the history row needs, from request to answer.
pub struct Context {
    mailbox: String,
    device_id: String,
    device_type: String,
    /// One allocation shared with the registration and the pod's index of parked Pings.
    key: Arc<str>,
    request_id: u64,
    started_at: DateTime<Utc>,
    started: Instant,
    requested_heartbeat: Option<u32>,
    protocol_version: Option<String>,
    user_agent: Option<String>,
    keep_alive: bool,
}

impl Context {
    fn device(&self) -> Device<'_> {
        Device {
            mailbox: &self.mailbox,
            device_id: &self.device_id,
            key: &self.key,
        }
    }
}

/// How a Ping ended, before its answer is written.
pub struct Finished {
    response: PingResponse,
    outcome: &'static str,
    /// Versions to acknowledge once the Status 2 is written.
    reported: Vec<FolderVersion>,
    clock: Option<WakeClock>,
    heartbeat: Option<u32>,
    /// The wake's trace, when the answer is a wake-up.
    traceparent: Option<String>,
    /// An HTTP status to answer instead of a Ping body (the upstream's 449, 401, ...).
    http: Option<u16>,
}

impl Finished {
    fn new(response: PingResponse, outcome: &'static str) -> Self {
        Finished {
            response,
            outcome,
            reported: Vec::new(),
            clock: None,
            heartbeat: None,
            traceparent: None,
            http: None,
        }
    }

    fn changes(reported: Vec<FolderVersion>, clock: Option<WakeClock>) -> Self {
        let ids = reported.iter().map(|v| v.id.clone()).collect();
        Finished {
            reported,
            clock,
            ..Finished::new(PingResponse::changes(ids), "changed")
        }
    }
}

/// The device closed its connection while parked.
pub struct ClientGone;

/// What [`start`] decided.
/// Both boxed: the connection's future holds this across its answer's or its wait's awaits, and
/// is as large as its largest state; inline, a parked connection's task carried a `Context` and
/// a `Waiting` twice over (measured in release: the connection future 1,784 bytes, boxed 1,128).
pub enum Started {
    Answer(Box<(Context, Finished)>),
    Parked(Box<Waiting>),
}

impl Started {
    fn answer(context: Context, finished: Finished) -> Started {
        Started::Answer(Box::new((context, finished)))
    }
}

/// A parked Ping: all its connection keeps while it waits.
pub struct Waiting {
    registration: Registration,
    slot: Arc<Slot>,
    pub context: Context,
    owner: Owner,
    heartbeat: u32,
    folders: Vec<PingFolder>,
    /// Proxy mode, rarely set (hence boxed: every parked Ping pays for the pointer only).
    held: Option<Box<Held>>,
    probe: Option<Box<crate::proxy::probe::Credentials>>,
}

/// News held back by the repeat backoff, to be reported at `at` (or with newer news).
struct Held {
    pending: Vec<FolderVersion>,
    at: Instant,
}

/// Removes the Ping from the pod's index however it ends.
struct Registration {
    shared: Arc<Shared>,
    key: Arc<str>,
    request: u64,
    /// Counted in `dp_frontend_parked_pings`: only once its claim parked it. A Ping whose claim
    /// is still under way has no owner entry yet, so a change bumped meanwhile does not wake it
    /// (a known device hears it from its claim; a new one takes it as its baseline), and a
    /// count that included it would call a device parked before a change could reach it.
    counted: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.parked.remove(&self.key, self.request);
        if self.counted {
            self.shared.metrics.parked.dec();
        }
    }
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
    let context = Context {
        key: key.into(),
        mailbox,
        device_id: query.device_id.clone(),
        device_type: query.device_type.clone(),
        request_id: shared.next_request_id(),
        started_at: Utc::now(),
        started: Instant::now(),
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
    let device = waiting.context.device();
    // With replicas to wait for, a claim not on them in time answers like a Redis error.
    let claimed = shared.store.claim(
        &mut redis,
        device,
        &waiting.owner,
        ping,
        dp_runtime::now_ms(),
        shared.mode(),
    );
    let changed = match tokio::time::timeout(shared.config.redis_timeout, claimed).await {
        Ok(Ok(Claim::TooManyDevices)) => {
            shared.count_limited("devices_per_mailbox");
            tracing::warn!(mailbox = %waiting.context.mailbox, device = %waiting.context.device_id, max = shared.config.max_devices_per_mailbox, "Ping refused: the mailbox has state for MAX_DEVICES_PER_MAILBOX devices");
            let finished = Finished {
                http: Some(503),
                ..Finished::new(PingResponse::server_error(), "too_many_devices")
            };
            return answer_now(waiting, finished);
        }
        Ok(Ok(Claim::MissingParameters)) => {
            let finished = Finished::new(PingResponse::missing_parameters(), "rejected");
            return answer_now(waiting, finished);
        }
        Ok(Ok(Claim::HierarchyChanged { previous })) => {
            if let Some(previous) = previous {
                let (key, id) = (&waiting.context.key, waiting.context.request_id);
                evict(shared, key, &previous, id).await;
            }
            tracing::info!(mailbox = %waiting.context.mailbox, device = %waiting.context.device_id, "Ping names a folder outside the device's hierarchy: Status 7");
            let answer = PingResponse::folder_sync_required();
            return answer_now(waiting, Finished::new(answer, "hierarchy"));
        }
        Ok(Ok(Claim::Claimed {
            previous,
            heartbeat,
            folders,
            changed,
            repeats,
            hierarchy_known,
            fresh,
        })) => {
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
        Ok(Err(err)) => {
            let failed = redis_failed(shared, device, &err.to_string());
            return answer_now(waiting, failed);
        }
        Err(_) => {
            let failed = redis_failed(shared, device, "timed out");
            return answer_now(waiting, failed);
        }
    };
    if changed.is_empty() {
        return park(waiting);
    }
    let mut finished = Finished::changes(changed, None);
    finished.heartbeat = Some(waiting.heartbeat);
    answer_now(waiting, finished)
}

/// The Ping, registered in the pod's index before its claim: a wake that follows the claim
/// finds the slot.
fn registered(shared: &Arc<Shared>, context: Context, ping: &PingRequest) -> Waiting {
    let limits = shared.config.limits;
    let slot = shared
        .parked
        .register(context.key.clone(), context.request_id);
    if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
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

/// The parked state: waits for news, eviction, drain, the heartbeat, or the client leaving.
pub async fn wait<S: Transport>(
    waiting: &Waiting,
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_pipelined: usize,
) -> Result<Finished, ClientGone> {
    let deadline = waiting.context.started + Duration::from_secs(waiting.heartbeat.into());
    let every = waiting.probe.as_ref().and_then(|p| p.interval());
    let mut probe_at = every
        .map(|every| waiting.context.started + every)
        .filter(|at| *at < deadline);
    let held = waiting.held.as_deref();
    let ended = |response, outcome| {
        let mut finished = Finished::new(response, outcome);
        finished.heartbeat = Some(waiting.heartbeat);
        finished
    };
    loop {
        // One timer for the heartbeat, held-back news and the probe: tokio builds every
        // branch's future, enabled or not, and a Sleep is a large part of a parked Ping.
        let next = [held.map(|h| h.at), probe_at]
            .into_iter()
            .flatten()
            .fold(deadline, Instant::min);
        tokio::select! {
            // News first, so a change and the heartbeat falling due together report the change.
            biased;
            signals = waiting.slot.next() => {
                match signals.end {
                    Some(End::Superseded) => return Ok(ended(PingResponse::expired(), "superseded")),
                    Some(End::Drained) => return Ok(ended(PingResponse::expired(), "drained")),
                    Some(End::Hierarchy) => {
                        return Ok(ended(PingResponse::folder_sync_required(), "hierarchy"))
                    }
                    None => {}
                }
                let mut news = monitored(&waiting.folders, signals.changes);
                if let (false, Some(held)) = (news.is_empty(), held) {
                    news.extend(held.pending.iter().cloned());
                }
                if signals.recheck {
                    match Box::pin(recheck(waiting)).await {
                        Some(Check::Superseded) => return Ok(ended(PingResponse::expired(), "superseded")),
                        Some(Check::Changed(found)) => news.extend(found),
                        None => recheck_later(waiting),
                    }
                }
                if !news.is_empty() {
                    let mut finished = Finished::changes(dedupe(news), signals.clock);
                    finished.heartbeat = Some(waiting.heartbeat);
                    finished.traceparent = signals.traceparent;
                    return Ok(finished);
                }
            }
            _ = tokio::time::sleep_until(next) => {
                if let Some(held) = held.filter(|h| h.at <= next) {
                    let mut finished = Finished::changes(held.pending.clone(), None);
                    finished.heartbeat = Some(waiting.heartbeat);
                    return Ok(finished);
                }
                if probe_at.is_none_or(|at| at > next) {
                    return Ok(ended(PingResponse::expired(), "expired"));
                }
                if let Some(finished) = Box::pin(probe(waiting)).await {
                    return Ok(finished);
                }
                probe_at = probe_at
                    .zip(every)
                    .map(|(at, every)| at + every)
                    .filter(|at| *at < deadline);
            }
            () = stream.closed(buf, max_pipelined) => return Err(ClientGone),
        }
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

/// Asks the upstream about the parked Ping's folders; an answer the device must hear ends it.
async fn probe(waiting: &Waiting) -> Option<Finished> {
    use crate::proxy::probe::Probed;
    let shared = &waiting.registration.shared;
    let credentials = waiting.probe.as_deref()?;
    let device = waiting.context.device();
    let mut finished =
        match crate::proxy::probe::run(shared, device, &waiting.folders, credentials).await {
            Probed::Nothing => return None,
            Probed::Changed(ids) => {
                let versions = ids
                    .into_iter()
                    .map(|id| FolderVersion { id, version: 0 })
                    .collect();
                Finished::changes(versions, None)
            }
            Probed::Status(status) => Finished::new(PingResponse::status(status), "upstream"),
            Probed::Http(code) => Finished {
                http: Some(code),
                ..Finished::new(PingResponse::server_error(), "upstream")
            },
        };
    finished.heartbeat = Some(waiting.heartbeat);
    Some(finished)
}

/// How long a failed re-check waits before it is tried again.
const RECHECK_RETRY: Duration = Duration::from_secs(1);

/// A re-check that failed (Redis unreachable) is tried again until it succeeds or the Ping
/// ends: the wakes it stands in for are lost, and only Redis knows what they said.
fn recheck_later(waiting: &Waiting) {
    let registration = &waiting.registration;
    let (shared, key, request) = (
        registration.shared.clone(),
        registration.key.clone(),
        registration.request,
    );
    tokio::spawn(async move {
        tokio::time::sleep(RECHECK_RETRY).await;
        shared.parked.tell(&key, request, |s| s.recheck = true);
    });
}

async fn recheck(waiting: &Waiting) -> Option<Check> {
    let shared = &waiting.registration.shared;
    // Bounded, so a reconnect with a hundred thousand parked Pings does not flood Redis.
    let _permit = shared.rechecks.acquire().await.ok()?;
    let mut redis = shared.redis.clone();
    let device = waiting.context.device();
    let check = shared
        .store
        .check(&mut redis, device, &waiting.owner, &waiting.folders);
    match tokio::time::timeout(shared.config.redis_timeout, check).await {
        Ok(Ok(check)) => Some(check),
        _ => {
            shared.metrics.redis_errors.inc();
            tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, "re-check failed; the Ping stays parked");
            None
        }
    }
}

fn count(shared: &Shared, outcome: &'static str, status: &'static str) {
    shared
        .metrics
        .pings
        .get_or_create(&OutcomeLabels { outcome, status })
        .inc();
}

fn status_label(status: u8) -> &'static str {
    const LABELS: [&str; 9] = ["0", "1", "2", "3", "4", "5", "6", "7", "8"];
    match status {
        140 => "140",
        142 => "142",
        143 => "143",
        144 => "144",
        other => LABELS[usize::from(other).min(8)],
    }
}

/// Writes the answer (unless the client is gone), acknowledges what a Status 2 reported (I2),
/// and records the history row. Returns whether the connection stays open, and the Status 2
/// whose delivery the connection's end will tell (standalone mode, see `delivery`).
pub async fn finish<S: Transport>(
    shared: &Shared,
    stream: &mut S,
    context: &Context,
    ended: Result<Finished, ClientGone>,
) -> std::io::Result<Reply> {
    let mut row = HistoryRow {
        started_at: context.started_at,
        ended_at: Utc::now(),
        mailbox: context.mailbox.clone(),
        device_id: context.device_id.clone(),
        device_type: context.device_type.clone(),
        pod: shared.config.common.pod.clone(),
        request_id: context.request_id,
        requested_heartbeat: context.requested_heartbeat,
        effective_heartbeat: None,
        outcome: "client_gone",
        status: None,
        changed_folders: Vec::new(),
        protocol_version: context.protocol_version.clone(),
        user_agent: context.user_agent.clone(),
    };
    let mut released = false;
    let written = match ended {
        Err(ClientGone) => {
            count(shared, "client_gone", "");
            Ok(Reply::default())
        }
        Ok(finished) => {
            let written = match &finished.traceparent {
                // A wake-up's answer ends the trace its change started at the ingest API.
                Some(traceparent) => {
                    let span = tracing::info_span!(
                        "answer wake",
                        mailbox = %context.mailbox,
                        device = %context.device_id
                    );
                    dp_runtime::telemetry::set_parent(&span, Some(traceparent));
                    answer(shared, stream, context, &finished)
                        .instrument(span)
                        .await
                }
                None => answer(shared, stream, context, &finished).await,
            };
            row.outcome = finished.outcome;
            row.status = Some(finished.response.status.code());
            row.effective_heartbeat = finished.heartbeat;
            row.changed_folders = finished.response.folders;
            // A drained device must reconnect, and reach another pod.
            written.map(|answered| {
                released = answered.released;
                Reply {
                    keep_alive: context.keep_alive && finished.outcome != "drained",
                    unconfirmed: answered.unconfirmed,
                }
            })
        }
    };
    row.ended_at = Utc::now();
    shared.history.record(row);
    if !released {
        // Boxed: its Redis future is larger than a parked Ping's state, and would size every one.
        Box::pin(release(shared, context)).await;
    }
    written
}

/// The ended Ping's owner entry goes (bump reads every owner of a mailbox on each change); a
/// failure only leaves it to expire, as before.
async fn release(shared: &Shared, context: &Context) {
    let mut redis = shared.redis.clone();
    let released = shared
        .store
        .release(&mut redis, context.device(), ended(shared, context));
    let _ = tokio::time::timeout(shared.config.redis_timeout, released).await;
}

fn ended<'a>(shared: &'a Shared, context: &Context) -> dp_keyspace::Ended<'a> {
    dp_keyspace::Ended {
        pod: &shared.config.common.pod,
        request: context.request_id,
    }
}

/// A written answer: the Status 2 whose delivery the connection's end will tell, and whether
/// its acknowledgement released the Ping's owner entry already.
struct Answered {
    unconfirmed: Option<Box<Unconfirmed>>,
    released: bool,
}

async fn answer<S: Transport>(
    shared: &Shared,
    stream: &mut S,
    context: &Context,
    finished: &Finished,
) -> std::io::Result<Answered> {
    let keep_alive = context.keep_alive && finished.outcome != "drained";
    let mut answered = Answered {
        unconfirmed: None,
        released: false,
    };
    if let Some(code) = finished.http {
        count(shared, finished.outcome, "");
        shared.count_http(code);
        let bytes = if finished.outcome == "too_many_devices" {
            let message = "this mailbox has as many devices as allowed; a new one is refused";
            response::unavailable(shared.config.retry_after_secs, message)
        } else {
            let message = "the ActiveSync server answered this for the device";
            response::error(code, message, &[], !keep_alive)
        };
        stream.write_all(&bytes).await?;
        return Ok(answered);
    }
    let status = finished.response.status.code();
    count(shared, finished.outcome, status_label(status));
    shared.count_http(200);
    let bytes = response::wbxml(&finished.response.encode(), keep_alive);
    stream.write_all(&bytes).await?;
    if let Some(clock) = finished.clock {
        shared.metrics.observe_answer(&clock, dp_runtime::now_us());
    }
    if finished.reported.is_empty() {
        return Ok(answered);
    }
    answered.released = acknowledge(shared, context, finished).await;
    answered.unconfirmed = match shared.mode() {
        dp_keyspace::Mode::Standalone => Some(Box::new(Unconfirmed {
            mailbox: context.mailbox.clone(),
            device_id: context.device_id.clone(),
            key: context.key.clone(),
            versions: finished.reported.clone(),
            written: Instant::now(),
        })),
        // The device's Sync acknowledges: a lost answer is simply repeated.
        dp_keyspace::Mode::Proxy => None,
    };
    Ok(answered)
}

/// How a Ping's connection goes on after its answer.
#[derive(Default)]
pub struct Reply {
    pub keep_alive: bool,
    pub unconfirmed: Option<Box<Unconfirmed>>,
}

/// After a Status 2 is written. Standalone: what it reported stands, unless the device comes
/// back later than that Ping's heartbeat would have run out (see [`dp_keyspace::Store::ack`]).
/// Proxy: nothing stands until the device syncs; the answer is only counted. Either releases the
/// Ping's owner entry in the same round trip; returns whether it did.
async fn acknowledge(shared: &Shared, context: &Context, finished: &Finished) -> bool {
    let mut redis = shared.redis.clone();
    let device = context.device();
    let done = match shared.mode() {
        dp_keyspace::Mode::Standalone => {
            // When this Ping's heartbeat would have run out: a device back sooner heard us.
            let until_ms = context.started_at.timestamp_millis().max(0) as u64
                + u64::from(finished.heartbeat.unwrap_or(0)) * 1000;
            let ack = shared.store.ack(
                &mut redis,
                device,
                ended(shared, context),
                &finished.reported,
                until_ms,
            );
            match tokio::time::timeout(shared.config.redis_timeout, ack).await {
                Ok(Ok(recorded)) => {
                    if !recorded {
                        // Its next Ping finds it new to Redis, and its folders are news (I1).
                        tracing::info!(mailbox = %device.mailbox, device = %device.device_id, "Status 2 not recorded: Redis lost the device's state since its claim");
                    }
                    true
                }
                _ => false,
            }
        }
        dp_keyspace::Mode::Proxy => {
            let counted = shared.store.reported(
                &mut redis,
                device,
                ended(shared, context),
                &finished.reported,
            );
            tokio::time::timeout(shared.config.redis_timeout, counted)
                .await
                .is_ok_and(|r| r.is_ok())
        }
    };
    if !done {
        // Not acknowledged means the device hears of it again: a duplicate, never a loss.
        shared.metrics.redis_errors.inc();
        tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, "Status 2 not recorded in Redis; the device will hear of it again");
    }
    done
}
