//! Loss of Redis state (a restart without persistence, a failover to a replica that missed
//! writes): the namespace's epoch key is gone, and the first service to look makes a new one.
//! A frontend follows it every second. A new epoch re-checks every parked Ping (their wakes may
//! have gone with the old state), and a device Redis knows nothing of, but that PostgreSQL saw
//! before the epoch began, hears every folder it monitors once: its state was lost, not new
//! (I1: a duplicate at worst, never a loss).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::Shared;

/// How often a frontend reads the epoch.
const EVERY: Duration = Duration::from_secs(1);

/// The epoch this pod last saw: when it began (ms), and a hash of its id.
#[derive(Default)]
pub struct Seen {
    created_ms: AtomicU64,
    id_hash: AtomicU64,
    /// Whether the namespace had state before this epoch (an earlier epoch recorded in
    /// PostgreSQL): 0 not known yet, 1 yes, 2 no.
    /// Asked once per epoch; when nothing predates it (a fresh deployment), nothing ever will,
    /// and new devices cost no lookup.
    any_before: std::sync::atomic::AtomicU8,
}

/// Reads the epoch once now (so the pod never serves without one), then every second.
pub async fn watch(shared: Arc<Shared>) {
    // Unread here, it is read again in a second, and at the first claim of a device Redis
    // holds nothing of (which says why, if it still cannot be read).
    let _ = refresh(&shared).await;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(EVERY);
        loop {
            interval.tick().await;
            let _ = refresh(&shared).await;
        }
    });
}

/// Reads the epoch and follows it; the reason when it could not be read.
async fn refresh(shared: &Shared) -> anyhow::Result<()> {
    let mut redis = shared.redis.clone();
    let now = dp_runtime::now_ms();
    let epoch = tokio::time::timeout(
        shared.config.redis_timeout,
        shared.store.epoch(&mut redis, now),
    )
    .await
    .context("reading the epoch timed out")?
    .context("reading the epoch")?;
    let hash = {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(&epoch.id)
    };
    if shared.epoch.id_hash.load(Ordering::Acquire) != hash {
        // Not yet known for the new epoch: until it is, each device is looked up.
        shared.epoch.any_before.store(0, Ordering::Release);
    }
    let before = shared.epoch.id_hash.swap(hash, Ordering::AcqRel);
    shared
        .epoch
        .created_ms
        .store(epoch.created_ms, Ordering::Release);
    if before != hash || shared.epoch.any_before.load(Ordering::Acquire) == 0 {
        let state = match had_state_before(shared, &epoch).await {
            Ok(true) => 1,
            Ok(false) => 2,
            Err(err) => {
                tracing::warn!(error = %err, "recorded Redis epochs unreadable; until they are read, each device Redis holds nothing of is looked up in the devices table");
                0
            }
        };
        shared.epoch.any_before.store(state, Ordering::Release);
    }
    if before != 0 && before != hash {
        shared.metrics.redis_state_losses.inc();
        let parked = shared.parked.tell_all(|s| s.recheck = true);
        tracing::error!(parked, "Redis lost its state (a new epoch): parked Pings re-check, and devices it forgot hear their folders again");
    }
    Ok(())
}

/// Whether the namespace had Redis state before `epoch`: an earlier epoch of it is recorded.
/// (Not "a device first seen before it": the devices table has no namespace, and a device whose
/// first Ping was parked when the state went has no row yet; rows are written as Pings end.)
async fn had_state_before(
    shared: &Shared,
    epoch: &dp_keyspace::Epoch,
) -> Result<bool, sqlx::Error> {
    let namespace = &shared.config.common.namespace;
    dp_db::history::record_epoch(shared.auth.pool(), namespace, &epoch.id).await
}

/// Whether a device Redis holds no state for had state before the current epoch began: the
/// devices table saw it first before then, or does not know it at all while the namespace had
/// state before (its first Ping may have been parked when the state went; a device new since
/// then hears its folders once: a duplicate, never a loss). Unknown (the database unreachable)
/// counts as yes.
pub async fn predates_loss(shared: &Shared, mailbox: &str, device_id: &str) -> bool {
    // The epoch as it is now, not as last polled: in the second before the poll sees a loss, a
    // device whose state just went would be judged by the old epoch, taken for new, and the
    // changes bumped since the loss would become its baseline unheard (found by the chaos
    // smoke run). One round trip, for devices Redis knows nothing of only. Unread (Redis
    // answered the claim but not this), the last epoch seen may be the one that was lost: its
    // "nothing before" would take the device for new, so it counts as known.
    if let Err(err) = refresh(shared).await {
        tracing::warn!(%mailbox, device = %device_id, error = %format!("{err:#}"), "epoch unreadable; a device Redis holds nothing of is told of its folders");
        return true;
    }
    let created = shared.epoch.created_ms.load(Ordering::Acquire);
    let ttl = shared.config.device_state_ttl.as_millis() as u64;
    // State older than the TTL would have expired anyway: nothing to look up.
    if created == 0 || created + ttl < dp_runtime::now_ms() {
        return false;
    }
    if shared.epoch.any_before.load(Ordering::Acquire) == 2 {
        return false;
    }
    match dp_db::history::first_seen_ms(shared.auth.pool(), mailbox, device_id).await {
        Ok(Some(first_seen)) => first_seen < created,
        Ok(None) => true,
        Err(err) => {
            tracing::warn!(%mailbox, device = %device_id, error = %err, "devices table unreadable; a device Redis forgot is told of its folders");
            true
        }
    }
}
