//! The parked state, and what can end it besides a wake: the heartbeat, held-back news, a
//! probe of the upstream, a re-check after lost wakes.

use std::time::Duration;

use dp_keyspace::Check;
use dp_proto::events::FolderVersion;
use dp_proto::ping::{PingFolder, PingResponse};
use tokio::time::Instant;

use super::{ClientGone, Finished, Waiting};
use crate::parked::End;
use crate::transport::Transport;

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
            failed = stream.closed(buf, max_pipelined) => {
                if let Some(err) = failed {
                    crate::connection::failed(&waiting.registration.shared, &err);
                }
                return Err(ClientGone);
            }
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
    let _permit = shared.limits.rechecks.acquire().await.ok()?;
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
