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

/// Keeps `Shared::imap_index` current until the process ends.
pub fn watch(shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(LOOK_EVERY);
        loop {
            interval.tick().await;
            let mut redis = shared.redis.clone();
            if let Ok(in_use) = shared.store.imap_in_use(&mut redis).await {
                shared.imap_index.store(in_use, Ordering::Relaxed);
            }
        }
    });
}

/// Records that `mailbox` has a Ping parked until `until_ms`, when an IMAP watcher needs it.
pub fn mark(shared: &Arc<Shared>, mailbox: &str, until_ms: u64) {
    if !shared.imap_index.load(Ordering::Relaxed) {
        return;
    }
    let (shared, mailbox) = (shared.clone(), mailbox.to_owned());
    tokio::spawn(async move {
        let mut redis = shared.redis.clone();
        if let Err(err) = shared
            .store
            .mark_pinged(&mut redis, &mailbox, until_ms)
            .await
        {
            tracing::warn!(%mailbox, error = %err, "could not record the mailbox for the IMAP watcher");
        }
    });
}
