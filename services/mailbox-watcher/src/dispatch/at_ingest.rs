//! Wakes made where changes come in (WAKE_AT_INGEST): the ingest API and the imap role bump and
//! wake a request's changes before writing them to JetStream, which saves a wake the hop through
//! the stream and its consumer. A change woken here is written to the woken stream
//! (`<ns>.woken.<mailbox>`), which no dispatcher reads; one that could not be woken goes to the
//! change stream and is dispatched as before.
//!
//! I1 holds as it does for the dispatcher: a producer hears 202 only once JetStream holds its
//! changes, and a change counts as woken only once its bump is done and its wake reached the
//! pod over a direct link or was flushed to NATS, the point where a dispatcher would acknowledge it and be done. A crash between the
//! wake and the JetStream write costs the producer its 202, so it sends again: a duplicate,
//! never a loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use dp_proto::events::{ChangeEvent, WakeStages};
use dp_proto::ids::canonical_mailbox;
use dp_runtime::redis::Redis;

use super::{apply, Group};
use crate::Shared;

/// How long the bumps and the flush may take here. Past it the changes go the dispatcher's
/// way (a bump that completes late costs a duplicate wake, nothing more).
const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure this path rests so long: while Redis or NATS is away, a producer's request
/// must not wait out a failure before its changes are written.
const REST: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct AtIngest {
    /// The dispatch role's connection, once it has one.
    redis: OnceLock<Redis>,
    /// Until when (ms since the epoch) the path rests after a failure.
    resting_until_ms: AtomicU64,
    /// JetStream refused the last write. Until one succeeds (and the rest is over), changes
    /// are not woken here: a wake comes before the write, so a producer retrying its 503 would
    /// wake the mailbox's devices on every try, a storm (I2) the dispatcher's path never made.
    stream_trouble: AtomicBool,
    /// When (ms since the epoch) a write last found the woken stream missing.
    missing_at_ms: AtomicU64,
}

impl AtIngest {
    pub(crate) fn connected(&self, redis: Redis) {
        let _ = self.redis.set(redis);
    }

    /// Whether JetStream took a request's changes (woken or not).
    pub(crate) fn stream_answered(&self, took: bool) {
        if !took {
            self.rest();
        }
        self.stream_trouble.store(!took, Ordering::Relaxed);
    }

    /// A write found the woken stream missing: whether to create it again (once per REST, however
    /// many requests fail meanwhile).
    pub(crate) fn woken_stream_missing(&self) -> bool {
        let now = dp_runtime::now_ms();
        let last = self.missing_at_ms.load(Ordering::Relaxed);
        now >= last + REST.as_millis() as u64
            && self
                .missing_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn rest(&self) {
        let until = dp_runtime::now_ms() + REST.as_millis() as u64;
        self.resting_until_ms.store(until, Ordering::Relaxed);
    }

    /// Bumps and wakes `changes`, accepted at `accepted_us`, and flushes the wakes; answers
    /// which of them were woken.
    pub(crate) async fn wake(
        &self,
        shared: &Shared,
        changes: &[ChangeEvent],
        accepted_us: u64,
    ) -> Vec<bool> {
        let mut woken = vec![false; changes.len()];
        let Some(redis) = self.redis.get().filter(|_| shared.config.wake_at_ingest) else {
            return woken;
        };
        if self.stream_trouble.load(Ordering::Relaxed)
            || dp_runtime::now_ms() < self.resting_until_ms.load(Ordering::Relaxed)
        {
            return woken;
        }
        let groups = grouped(shared, changes, accepted_us);
        let mut done = Vec::new();
        let mut failure = None;
        for (mailbox, _, members, outcome) in apply(shared, redis, groups, TIMEOUT).await {
            match outcome {
                Ok(()) => done.extend(members),
                Err(err) => failure = Some(format!("{mailbox}: {err:#}")),
            }
        }
        // Unflushed, no wake is sure to have left: none counts as woken.
        let flushed = flush(shared).await;
        if let Err(reason) = &flushed {
            failure = Some(reason.clone());
        }
        if let Some(reason) = failure {
            self.rest();
            tracing::warn!(%reason, rest_ms = REST.as_millis() as u64, "a wake at the ingest failed; the dispatcher makes it, and changes skip the ingest's wake for a while");
        }
        if flushed.is_err() {
            return woken;
        }
        let lag = dp_runtime::now_us().saturating_sub(accepted_us) as f64 / 1e6;
        for i in done {
            woken[i] = true;
            shared.metrics.dispatch_lag.observe(lag);
        }
        let count = woken.iter().filter(|w| **w).count() as u64;
        shared.metrics.changes_woken_at_ingest.inc_by(count);
        shared.metrics.changes_dispatched.inc_by(count);
        woken
    }
}

async fn flush(shared: &Shared) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, super::flush(shared)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("NATS flush: {err}")),
        Err(_) => Err("NATS flush timed out".into()),
    }
}

/// The changes merged per mailbox, each group with its changes' indices.
fn grouped(
    shared: &Shared,
    changes: &[ChangeEvent],
    accepted_us: u64,
) -> HashMap<String, (Group, Vec<usize>)> {
    // Nothing waited between acceptance and the bump: the stages before it take no time.
    let stages = WakeStages {
        stored_us: accepted_us,
        taken_us: accepted_us,
        closed_us: accepted_us,
        ..WakeStages::default()
    };
    let mut groups: HashMap<String, (Group, Vec<usize>)> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        let (group, members) = groups
            .entry(canonical_mailbox(&change.mailbox))
            .or_insert_with(|| (Group::new(stages), Vec::new()));
        group.add(shared, change, accepted_us, None);
        members.push(i);
    }
    groups
}
