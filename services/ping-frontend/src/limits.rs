//! Limits that protect the pod from one client: connections per source address, Pings per
//! device per minute (a device stuck in a re-ping loop gets 503 + Retry-After, not service),
//! and failed logins per source address and per account.
//! Both are counted per pod, in memory: a load balancer keeps a device's connection on one pod.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::Config;

const SHARDS: usize = 32;

/// What a pod bounds besides its connection count: connections per source, Ping rates, and
/// re-checks under way at once.
pub struct Limits {
    pub sources: Arc<SourceLimit>,
    pub pings: PingRates,
    /// Bounded, so a reconnect with a hundred thousand parked Pings does not flood Redis.
    pub rechecks: Semaphore,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            sources: SourceLimit::new(config.max_connections_per_source),
            pings: PingRates {
                device: RateWindow::new(config.pings_per_device_per_minute),
                mailbox: RateWindow::new(config.pings_per_mailbox_per_minute),
            },
            rechecks: Semaphore::new(RECHECKS_AT_ONCE),
        }
    }
}

/// Re-checks of parked Pings against Redis under way at once (after lost wakes).
const RECHECKS_AT_ONCE: usize = 64;

/// Open connections per source address.
pub struct SourceLimit {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Held while a connection is open; releases its count when dropped.
pub struct SourceSlot {
    limit: Arc<SourceLimit>,
    source: IpAddr,
}

impl SourceLimit {
    /// `max` 0 means unlimited.
    pub fn new(max: usize) -> Arc<SourceLimit> {
        Arc::new(SourceLimit {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `source`, unless it already has the most allowed.
    pub fn acquire(self: &Arc<Self>, source: IpAddr) -> Option<SourceSlot> {
        if self.max == 0 {
            return Some(SourceSlot {
                limit: self.clone(),
                source,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(source).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            limit: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if self.limit.max == 0 {
            return;
        }
        let mut open = self.limit.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// The Ping rates a pod enforces: per device and per mailbox (one mailbox's devices together).
pub struct PingRates {
    pub device: RateWindow,
    pub mailbox: RateWindow,
}

impl PingRates {
    /// The limit the Ping is over (`pings_per_device` or `pings_per_mailbox`) and how long to
    /// wait, if it is over one. A Ping refused per device does not count against its mailbox.
    pub fn hit(&self, device: &str, mailbox: &str) -> Result<(), (&'static str, Duration)> {
        self.device
            .hit(device)
            .map_err(|wait| ("pings_per_device", wait))?;
        self.mailbox
            .hit(mailbox)
            .map_err(|wait| ("pings_per_mailbox", wait))
    }
}

/// Events per key per fixed one-minute window: Pings per device, failed logins per source and
/// per account. Windows of keys gone quiet are swept as their shard is touched, so memory
/// follows the keys active this minute.
pub struct RateWindow {
    max: u32,
    window: Duration,
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

struct Shard {
    counts: HashMap<String, (Instant, u32)>,
    swept: Instant,
}

impl RateWindow {
    /// `max` 0 means unlimited.
    pub fn new(max: u32) -> RateWindow {
        RateWindow {
            max,
            window: Duration::from_secs(60),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        counts: HashMap::new(),
                        swept: Instant::now(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// Runs `f` on the key's (count, wait until the window ends), `None` when unlimited.
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut u32, Duration) -> T) -> Option<T> {
        if self.max == 0 {
            return None;
        }
        let now = Instant::now();
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(shard.swept) >= self.window {
            let window = self.window;
            shard
                .counts
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            shard.swept = now;
        }
        // Look up before inserting: the common case (a key seen this minute) allocates nothing.
        if !shard.counts.contains_key(key) {
            shard.counts.insert(key.to_owned(), (now, 0));
        }
        let (start, count) = shard.counts.get_mut(key)?;
        if now.duration_since(*start) >= self.window {
            *start = now;
            *count = 0;
        }
        let left = self.window.saturating_sub(now.duration_since(*start));
        Some(f(count, left))
    }

    /// Counts one event; `Err(retry_after)` when it is over the limit.
    pub fn hit(&self, key: &str) -> Result<(), Duration> {
        let max = self.max;
        match self.with(key, |count, left| {
            *count += 1;
            (*count > max).then_some(left)
        }) {
            Some(Some(wait)) => Err(wait),
            _ => Ok(()),
        }
    }

    /// Whether the key is already at the limit, without counting: `Some(retry_after)`.
    pub fn over(&self, key: &str) -> Option<Duration> {
        let max = self.max;
        self.with(key, |count, left| (*count >= max).then_some(left))
            .flatten()
    }

    /// Counts one event without checking.
    pub fn record(&self, key: &str) {
        self.with(key, |count, _| *count += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_slots_are_counted_and_released() {
        let limit = SourceLimit::new(2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = limit.acquire(ip).expect("first");
        let _b = limit.acquire(ip).expect("second");
        assert!(limit.acquire(ip).is_none(), "third refused");
        assert!(
            limit.acquire([127, 0, 0, 2].into()).is_some(),
            "other sources unaffected"
        );
        drop(a);
        assert!(
            limit.acquire(ip).is_some(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn events_over_the_rate_are_refused_with_a_wait() {
        let rate = RateWindow::new(3);
        for _ in 0..3 {
            assert!(rate.hit("d").is_ok());
        }
        let wait = rate.hit("d").expect_err("fourth in the minute");
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(rate.hit("e").is_ok(), "other keys unaffected");
        assert!(RateWindow::new(0).hit("d").is_ok(), "0 is unlimited");

        let failures = RateWindow::new(2);
        assert!(failures.over("a").is_none());
        failures.record("a");
        failures.record("a");
        assert!(
            failures.over("a").is_some(),
            "at the limit: refuse before trying"
        );
        assert!(RateWindow::new(0).over("a").is_none());
    }
}
