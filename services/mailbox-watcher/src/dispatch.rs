//! The dispatch loop: a durable JetStream consumer that every watcher process shares. For each
//! batch of changes: one `bump` per mailbox, one wake per pod that holds a Ping of it, a flush,
//! and only then the acknowledgement. A watcher that dies before acking leaves the changes to be
//! redelivered to another after ACK_WAIT_SECS.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use async_nats::jetstream::consumer::pull::Stream as Messages;
use async_nats::jetstream::{AckKind, Message};
use dp_keyspace::Change;
use dp_proto::events::{ChangeEvent, ChangeKind, WakeEvent, WakeStages, WakeTarget};
use dp_proto::ids::canonical_mailbox;
use dp_runtime::redis::Redis;
use dp_runtime::shutdown::Drain;
use futures::{FutureExt, StreamExt};

use crate::Shared;

pub(crate) mod at_ingest;
pub(crate) mod links;
mod wakes;

/// Changes of one mailbox, merged: what its bump and wake need.
#[derive(Default)]
struct Group {
    folders: BTreeSet<String>,
    /// Store folders, as paths the scripts compare (see `store_folder`).
    store_folders: BTreeSet<String>,
    wake: bool,
    /// A folder was created, deleted or renamed: Status 7 for the mailbox's parked Pings.
    hierarchy: bool,
    accepted_at_us: u64,
    /// The trace of the group's first change (its ingest request), continued by the dispatch.
    traceparent: Option<String>,
    /// Its way through the watcher so far (the earliest stored, the batch's times).
    stages: WakeStages,
    /// Changes merged so far.
    changes: usize,
}

impl Group {
    fn new(stages: WakeStages) -> Group {
        Group {
            stages,
            ..Group::default()
        }
    }

    /// Merges `change`, stored in JetStream at `stored_us`.
    fn add(&mut self, shared: &Shared, change: &ChangeEvent, stored_us: u64, trace: Option<&str>) {
        self.stages.stored_us = self.stages.stored_us.min(stored_us);
        self.folders.extend(change.folders.iter().cloned());
        if let Some(name) = &change.store_folder {
            self.store_folders
                .insert(shared.config.store_names.path(name));
        }
        self.wake |= shared.config.wake_on.contains(&change.kind);
        self.hierarchy |= change.kind == ChangeKind::Hierarchy;
        let accepted = change.accepted_at_us.unwrap_or(stored_us);
        self.accepted_at_us = match self.changes {
            0 => accepted,
            _ => self.accepted_at_us.min(accepted),
        };
        if self.traceparent.is_none() {
            self.traceparent = trace.map(str::to_owned);
        }
        self.changes += 1;
    }
}

/// Bumps and wakes each mailbox's group, all at once: mailboxes are independent (a bump only
/// increments), so the bumps share the multiplexed Redis connection instead of one round trip
/// after another. The wakes are handed to NATS, not yet flushed.
async fn apply<T>(
    shared: &Shared,
    redis: &Redis,
    groups: HashMap<String, (Group, T)>,
    timeout: Duration,
) -> Vec<(String, Group, T, anyhow::Result<()>)> {
    futures::future::join_all(
        groups
            .into_iter()
            .map(|(mailbox, (group, held))| async move {
                let span = tracing::info_span!("dispatch change", mailbox = %mailbox);
                dp_runtime::telemetry::set_parent(&span, group.traceparent.as_deref());
                let outcome = bump_and_wake(shared, redis, &mailbox, &group, timeout)
                    .instrument(span)
                    .await;
                (mailbox, group, held, outcome)
            }),
    )
    .await
}

pub async fn run(shared: Arc<Shared>, redis: Redis, mut messages: Messages, mut drain: Drain) {
    loop {
        let first = tokio::select! {
            _ = drain.signalled() => return,
            next = messages.next() => next,
        };
        let taken_us = dp_runtime::now_us();
        let mut batch = match first {
            Some(Ok(message)) => vec![message],
            Some(Err(err)) => {
                tracing::warn!(error = %err, "change stream error; continuing");
                continue;
            }
            None => {
                tracing::error!("change stream ended");
                return;
            }
        };
        collect(&shared, &mut messages, &mut batch).await;
        let timing = WakeStages {
            taken_us,
            closed_us: dp_runtime::now_us(),
            ..WakeStages::default()
        };
        dispatch(&shared, &redis, batch, timing).await;
    }
}

/// Adds to `batch` what has already arrived. Only when more is known to be coming (the change
/// says the rest of its ingest request follows, or more than one had arrived: a burst under
/// way) does it wait up to COALESCE_MS for it. A lone change goes out at once: the window would
/// be all of its wait (issue 14), and there is nothing to merge it with.
async fn collect(shared: &Shared, messages: &mut Messages, batch: &mut Vec<Message>) {
    let max = shared.config.dispatch_batch;
    while batch.len() < max {
        match messages.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(message),
            _ => break,
        }
    }
    if batch.len() == 1 && !has_followers(&batch[0]) {
        return;
    }
    let deadline = tokio::time::Instant::now() + shared.config.coalesce;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(message))) => batch.push(message),
            _ => break,
        }
    }
}

fn has_followers(message: &Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(crate::FOLLOWS))
        .is_some_and(|v| v.as_str() != "0")
}

/// How long a dispatcher's bump may take before its changes are left for redelivery.
const BUMP_TIMEOUT: Duration = Duration::from_secs(2);

/// `timing`: when the batch was taken and closed (the stage budget).
async fn dispatch(shared: &Shared, redis: &Redis, batch: Vec<Message>, timing: WakeStages) {
    let groups = group(shared, batch, timing).await;
    let mut done = Vec::new();
    for (mailbox, group, messages, outcome) in apply(shared, redis, groups, BUMP_TIMEOUT).await {
        match outcome {
            Ok(()) => done.push((group, messages)),
            Err(err) => {
                shared.metrics.dispatch_errors.inc();
                tracing::warn!(%mailbox, error = %err, "dispatch failed; the changes will be redelivered");
                for message in messages {
                    retry_or_bury(shared, &mailbox, message).await;
                }
            }
        }
    }
    // The wakes must have reached their pods or the NATS server before the changes are
    // acknowledged.
    if let Err(err) = flush(shared).await {
        tracing::warn!(error = %err, "NATS flush failed; leaving changes for redelivery");
        return;
    }
    let now = dp_runtime::now_us();
    for (group, messages) in done {
        let lag = now.saturating_sub(group.accepted_at_us) as f64 / 1e6;
        for message in messages {
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %err, "ack failed; the change may be delivered again");
                continue;
            }
            shared.metrics.changes_dispatched.inc();
            shared.metrics.dispatch_lag.observe(lag);
        }
    }
}

/// Waits until every wake sent so far reached its pod: acknowledged over a direct link, or held
/// by the NATS server (a link that fails hands its wakes to NATS first).
async fn flush(shared: &Shared) -> Result<(), async_nats::client::FlushError> {
    shared.links.settle().await;
    shared.nats.flush().await
}

/// The batch's changes merged per mailbox, each group with its messages; invalid ones are
/// dropped.
async fn group(
    shared: &Shared,
    batch: Vec<Message>,
    timing: WakeStages,
) -> HashMap<String, (Group, Vec<Message>)> {
    let mut groups: HashMap<String, (Group, Vec<Message>)> = HashMap::new();
    for message in batch {
        let change: ChangeEvent = match serde_json::from_slice(&message.payload)
            .map_err(|e| e.to_string())
            .and_then(|c: ChangeEvent| c.validate().map(|_| c).map_err(|e| e.to_string()))
        {
            Ok(change) => change,
            Err(reason) => {
                // A producer's mistake does not get better by redelivery.
                tracing::warn!(subject = %message.subject, %reason, "invalid change dropped");
                shared.metrics.changes_invalid.inc();
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            }
        };
        let stored = published_us(&message);
        let trace = message
            .headers
            .as_ref()
            .and_then(|h| h.get(dp_runtime::telemetry::TRACEPARENT))
            .map(|v| v.as_str());
        let (group, messages) = groups
            .entry(canonical_mailbox(&change.mailbox))
            .or_insert_with(|| {
                let stages = WakeStages {
                    stored_us: stored,
                    ..timing
                };
                (Group::new(stages), Vec::new())
            });
        group.add(shared, &change, stored, trace);
        messages.push(message);
    }
    groups
}

/// A change whose dispatch failed is delivered again after 1, 2, 4 ... 60 s; on its last
/// allowed delivery (CHANGES_MAX_DELIVER) it moves to the dead-letter stream, where an
/// operator can see it, instead of being retried for ever or dropped unseen.
async fn retry_or_bury(shared: &Shared, mailbox: &str, message: Message) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
    if delivered < shared.config.max_deliver {
        let delay = Duration::from_secs(1 << (delivered - 1).min(6)).min(Duration::from_secs(60));
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        return;
    }
    let subject = shared.subjects.dead(mailbox);
    let buried = match shared
        .jetstream
        .publish(subject, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if buried {
        shared.metrics.changes_dead.inc();
        tracing::error!(%mailbox, delivered, "change moved to the dead-letter stream after its last delivery failed");
        let _ = message.ack_with(AckKind::Term).await;
    } else {
        // Not even the dead-letter stream takes it: JetStream delivers it no more, so keep it
        // pending (unacknowledged) rather than drop it; a restart redelivers it.
        tracing::error!(%mailbox, delivered, "change could not be dead-lettered; left unacknowledged");
    }
}

fn published_us(message: &Message) -> u64 {
    message
        .info()
        .map(|info| (info.published.unix_timestamp_nanos() / 1000).max(0) as u64)
        .unwrap_or_else(|_| dp_runtime::now_us())
}

async fn bump_and_wake(
    shared: &Shared,
    redis: &Redis,
    mailbox: &str,
    group: &Group,
    timeout: Duration,
) -> anyhow::Result<()> {
    let folders: Vec<String> = group.folders.iter().cloned().collect();
    let store_folders: Vec<String> = group.store_folders.iter().cloned().collect();
    let change = Change {
        folders: &folders,
        store_folders: &store_folders,
        hierarchy: group.hierarchy,
    };
    let mut redis = redis.clone();
    // With replicas to wait for (REDIS_WAIT_REPLICAS), the bump counts only once they hold
    // it: a primary that fails over before copying it would otherwise lose an acknowledged
    // change for good (I1). One not replicated in time fails, and the change comes again.
    let bump = shared
        .store
        .bump(&mut redis, mailbox, change, dp_runtime::now_ms());
    let bump = tokio::time::timeout(timeout, bump)
        .await
        .map_err(|_| anyhow::anyhow!("Redis timed out"))??;
    let stages = WakeStages {
        bumped_us: dp_runtime::now_us(),
        ..group.stages
    };
    wake(shared, mailbox, group, bump, stages).await
}

/// Sends one wake message to `pod`: over its direct link when it has one, else over NATS.
async fn send(
    shared: &Shared,
    pod: &str,
    subject: &str,
    payload: bytes::Bytes,
) -> anyhow::Result<()> {
    let traceparent = dp_runtime::telemetry::traceparent(&tracing::Span::current());
    let wake = links::Outgoing {
        subject: subject.to_owned(),
        payload,
        traceparent,
    };
    if let Err(wake) = shared.links.send(pod, wake) {
        links::publish(&shared.nats, wake).await?;
    }
    Ok(())
}

/// Wakes the pods holding the mailbox's parked Pings, one message per pod (split at the NATS
/// payload limit).
async fn wake(
    shared: &Shared,
    mailbox: &str,
    group: &Group,
    bump: dp_keyspace::Bump,
    stages: WakeStages,
) -> anyhow::Result<()> {
    let folders = &group.folders;
    shared
        .metrics
        .count_store_folders(bump.store_watched, bump.store_unwatched);
    // A store folder no parked Ping watches needs no wake: its version is raised for the
    // devices' next Pings, and that is all.
    let news = !folders.is_empty() || bump.store_watched > 0;
    if !((group.wake && news) || group.hierarchy) || bump.owners.is_empty() {
        return Ok(());
    }
    let mut by_pod: HashMap<String, Vec<WakeTarget>> = HashMap::new();
    for (device, owner) in bump.owners {
        by_pod.entry(owner.pod).or_default().push(WakeTarget {
            device,
            request: owner.request,
        });
    }
    let limit = match shared.config.wake_max_bytes {
        0 => shared.nats.server_info().max_payload,
        set => set,
    };
    for (pod, targets) in by_pod {
        let template = WakeEvent {
            mailbox: mailbox.to_owned(),
            folders: bump.versions.clone(),
            targets: Vec::new(),
            accepted_at_us: group.accepted_at_us,
            hierarchy: group.hierarchy,
            recheck: bump.store_watched > 0,
            stages: Some(WakeStages {
                sent_us: dp_runtime::now_us(),
                ..stages
            }),
        };
        let subject = shared.subjects.wake(&pod);
        for payload in wakes::payloads(&template, targets, limit)? {
            send(shared, &pod, &subject, payload.into()).await?;
            shared.metrics.wakes_sent.inc();
        }
    }
    Ok(())
}
