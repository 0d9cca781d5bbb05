//! The index of mailboxes with parked Pings, kept only while an IMAP watcher runs: that role
//! watches exactly these mailboxes in the store (see the watcher's `imap` module). A separate
//! key from the mailbox's own (one hash tag per mailbox), so it is written beside the claim,
//! not inside it, and never delays an answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::Shared;

/// How often a frontend looks whether an IMAP watcher runs.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Looks once now (so the first Pings are marked when an IMAP watcher already runs), then keeps
/// `Shared::imap_index` current until the process ends.
pub async fn watch(shared: Arc<Shared>) {
    look(&shared).await;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(LOOK_EVERY);
        interval.tick().await;
        loop {
            interval.tick().await;
            look(&shared).await;
        }
    });
}

async fn look(shared: &Shared) {
    let mut redis = shared.redis.clone();
    let in_use = shared.store.imap_in_use(&mut redis);
    if let Ok(Ok(in_use)) = tokio::time::timeout(shared.config.redis_timeout, in_use).await {
        shared.state.imap_index.store(in_use, Ordering::Relaxed);
    }
}

/// The first pause before a failed mark is made again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// Records that `mailbox` has a Ping parked until `until_ms`, when an IMAP watcher needs it.
/// A mark that fails (Redis unreachable, or not confirmed by a replica in cluster mode) is made
/// again while the Ping is parked: without it the watcher does not look at the mailbox, and its
/// mail would wake nobody (I1).
pub fn mark(shared: &Arc<Shared>, mailbox: &str, until_ms: u64) {
    if !shared.state.imap_index.load(Ordering::Relaxed) {
        return;
    }
    let (shared, mailbox) = (shared.clone(), mailbox.to_owned());
    tokio::spawn(async move {
        let mut pause = RETRY_FIRST;
        loop {
            let mut redis = shared.redis.clone();
            let marked = shared.store.mark_pinged(&mut redis, &mailbox, until_ms);
            let err = match tokio::time::timeout(shared.config.redis_timeout, marked).await {
                Ok(Ok(())) => return,
                Ok(Err(err)) => err.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            let wait = jittered(pause);
            let retry_at = dp_runtime::now_ms() + wait.as_millis() as u64;
            if retry_at >= until_ms {
                tracing::warn!(%mailbox, error = %err, "could not record the mailbox for the IMAP watcher; its mail wakes no Ping until the device's next Ping");
                return;
            }
            tracing::debug!(%mailbox, error = %err, retry_in_ms = wait.as_millis() as u64, "could not record the mailbox for the IMAP watcher; trying again");
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(RETRY_MOST);
        }
    });
}

/// Half to all of `pause`, at random: the marks of every Ping parked when Redis went away fail
/// together, and must not all come back in the same instant when it returns.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_spread_over_the_second_half_of_the_pause() {
        let waits: Vec<Duration> = (0..200).map(|_| jittered(RETRY_MOST)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= RETRY_MOST / 2 && *w <= RETRY_MOST));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 100,
            "spread, not one instant: {}",
            distinct.len()
        );
    }
}
