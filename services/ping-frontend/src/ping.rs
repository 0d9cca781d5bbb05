//! The Ping command in three steps, so that a parked connection keeps only what it needs:
//! [`start`] validates, claims and either answers at once or parks; [`wait`] is the parked
//! state (a small future: a signal, the heartbeat, or the client leaving); [`finish`] writes
//! the answer, acknowledges what was reported, and records the history row.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dp_keyspace::{Device, Owner};
use dp_proto::events::FolderVersion;
use dp_proto::ping::{PingFolder, PingResponse};
use tokio::time::Instant;

use crate::parked::{Slot, WakeClock};
use crate::Shared;

mod claim;
mod finish;
mod wait;

pub use claim::start;
pub use finish::{finish, Reply};
pub use wait::wait;

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
