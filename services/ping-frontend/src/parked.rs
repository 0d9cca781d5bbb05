//! The pod's index of its parked Pings: device key -> (request id, slot). A slot is how anyone
//! (a wake, an eviction, a reconnect, the drain) tells a parked connection something; the
//! connection's own task is the only one that answers, so a parked Ping costs no task or timer
//! beyond its connection's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use dp_proto::events::FolderVersion;
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// Why a parked Ping must end now, whatever else it was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Superseded,
    Drained,
    /// The mailbox's folder hierarchy changed: Status 7.
    Hierarchy,
}

/// When the changes a Ping was woken for were accepted, and when their first wake reached
/// this pod (microseconds): the wake latency and the stage budget's last stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeClock {
    pub accepted_us: u64,
    pub received_us: u64,
}

impl WakeClock {
    /// The earliest of both, when several wakes reach one Ping.
    pub fn merge(before: Option<WakeClock>, now: WakeClock) -> WakeClock {
        before.map_or(now, |b| WakeClock {
            accepted_us: b.accepted_us.min(now.accepted_us),
            received_us: b.received_us.min(now.received_us),
        })
    }
}

/// What a parked Ping has been told since it last looked.
#[derive(Debug, Default)]
pub struct Signals {
    pub changes: Vec<FolderVersion>,
    pub clock: Option<WakeClock>,
    /// The trace of the first wake, continued by the answer.
    pub traceparent: Option<String>,
    pub recheck: bool,
    pub end: Option<End>,
}

impl Signals {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.recheck && self.end.is_none()
    }
}

#[derive(Debug, Default)]
pub struct Slot {
    notify: Notify,
    signals: Mutex<Signals>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Slot {
    /// Merges a signal in and wakes the connection (a permit is kept if it is not waiting yet).
    pub fn tell(&self, update: impl FnOnce(&mut Signals)) {
        update(&mut lock(&self.signals));
        self.notify.notify_one();
    }

    /// Waits until something was told, and takes it.
    pub async fn next(&self) -> Signals {
        loop {
            self.notify.notified().await;
            let signals = std::mem::take(&mut *lock(&self.signals));
            if !signals.is_empty() {
                return signals;
            }
        }
    }
}

struct Entry {
    request: u64,
    slot: Arc<Slot>,
}

pub struct Parked {
    shards: Vec<Mutex<HashMap<Arc<str>, Entry>>>,
    hasher: RandomState,
}

impl Default for Parked {
    fn default() -> Self {
        Parked {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Parked {
    fn shard(&self, device: &str) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        let index = (self.hasher.hash_one(device) as usize) % SHARDS;
        lock(&self.shards[index])
    }

    /// Registers a Ping before its claim runs, so no wake can slip between the claim and the
    /// park. An older Ping of the device on this pod is told it was superseded.
    pub fn register(&self, device: Arc<str>, request: u64) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let old = self.shard(&device).insert(
            device.clone(),
            Entry {
                request,
                slot: slot.clone(),
            },
        );
        if let Some(old) = old {
            old.slot.tell(|s| s.end = Some(End::Superseded));
        }
        slot
    }

    /// Removes the device's entry if it is still this request's.
    pub fn remove(&self, device: &str, request: u64) {
        let mut shard = self.shard(device);
        if shard.get(device).is_some_and(|e| e.request == request) {
            shard.remove(device);
        }
    }

    /// Tells the device's parked Ping something, if it is `request`. Returns whether it was.
    pub fn tell(&self, device: &str, request: u64, update: impl FnOnce(&mut Signals)) -> bool {
        let slot = match self.shard(device).get(device) {
            Some(entry) if entry.request == request => entry.slot.clone(),
            _ => return false,
        };
        slot.tell(update);
        true
    }

    /// Every parked Ping's slot, now.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .values()
                    .map(|e| e.slot.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Tells every parked Ping the same thing (reconnect re-check, drain).
    pub fn tell_all(&self, update: impl Fn(&mut Signals)) -> usize {
        let mut told = 0;
        for shard in &self.shards {
            let slots: Vec<Arc<Slot>> = lock(shard).values().map(|e| e.slot.clone()).collect();
            for slot in slots {
                slot.tell(&update);
                told += 1;
            }
        }
        told
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_before_the_wait_is_not_lost() {
        let parked = Parked::default();
        let slot = parked.register("d".into(), 1);
        assert!(parked.tell("d", 1, |s| s.recheck = true));
        assert!(
            !parked.tell("d", 2, |s| s.recheck = true),
            "another request"
        );
        let signals = slot.next().await;
        assert!(signals.recheck);
    }

    #[tokio::test]
    async fn a_newer_registration_supersedes_the_older() {
        let parked = Parked::default();
        let old = parked.register("d".into(), 1);
        let _new = parked.register("d".into(), 2);
        assert_eq!(old.next().await.end, Some(End::Superseded));
        parked.remove("d", 1);
        assert_eq!(
            parked.len(),
            1,
            "removing the old request leaves the new one"
        );
        parked.remove("d", 2);
        assert!(parked.is_empty());
    }
}
