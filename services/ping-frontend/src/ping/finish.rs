//! After the decision: the answer written, a Status 2 acknowledged (I2), the owner entry
//! released and the history row recorded.

use chrono::Utc;
use dp_db::history::HistoryRow;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::{ClientGone, Context, Finished};
use crate::delivery::Unconfirmed;
use crate::http::response;
use crate::metrics::OutcomeLabels;
use crate::transport::Transport;
use crate::Shared;

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
        dp_keyspace::Mode::Standalone if shared.config.delivery_check => {
            Some(Box::new(Unconfirmed {
                mailbox: context.mailbox.clone(),
                device_id: context.device_id.clone(),
                key: context.key.clone(),
                versions: finished.reported.clone(),
                written: Instant::now(),
            }))
        }
        // Behind a balancer whose resets say nothing (DELIVERY_CHECK=false): what was written
        // stands, as it would if nobody could tell.
        dp_keyspace::Mode::Standalone => None,
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
