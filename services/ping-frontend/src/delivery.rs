//! Whether a Status 2 reached the device (standalone mode; in proxy mode the device's Sync
//! says so). A written answer is not a read one: on a Wi-Fi/LTE handover or an app restart the
//! device Pings again at once on a new connection, and the answer written into the old one is
//! lost. No request tells us (the device's next Ping looks the same either way), but the old
//! connection does: its kernel resets a connection whose reader is gone, and bytes a vanished
//! device never acknowledges fail the connection after the TCP user timeout
//! (`DELIVERY_TIMEOUT_SECS`, set on every device socket). Such a failure soon after a Status 2
//! makes its folders news to the device again, and re-checks the device's parked Ping wherever
//! it is. A clean close or a next request on the connection settles it: delivered.
//!
//! Behind a balancer that terminates TCP (HAProxy, an ingress controller) the balancer is the
//! peer, and this only sees what it forwards; a balancer that resets its side when the device's
//! side fails keeps the signal, one that closes cleanly loses it (proxy mode does not depend on
//! it).

use std::sync::Arc;
use std::time::Duration;

use dp_keyspace::Device;
use dp_proto::events::{FolderVersion, WakeEvent, WakeTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::transport::Transport;
use crate::Shared;

/// A Status 2 written, not yet known to be read.
pub struct Unconfirmed {
    pub mailbox: String,
    pub device_id: String,
    pub key: std::sync::Arc<str>,
    pub versions: Vec<FolderVersion>,
    pub written: Instant,
}

impl Unconfirmed {
    fn device(&self) -> Device<'_> {
        Device {
            mailbox: &self.mailbox,
            device_id: &self.device_id,
            key: &self.key,
        }
    }
}

/// Errors that mean the device did not read what was written: its kernel reset the
/// connection (nobody reads), or never acknowledged the bytes (gone).
pub fn lost_in_transit(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionReset | ConnectionAborted | TimedOut | BrokenPipe
    )
}

/// Settles an unconfirmed answer by how its connection ended: `failure` is the error that
/// ended it, if any. Only a loss within the TCP user timeout (and a margin) of the write counts:
/// later, the bytes were acknowledged, or the kernel would have failed the connection sooner.
pub fn settle(
    shared: &Arc<Shared>,
    unconfirmed: Option<Box<Unconfirmed>>,
    failure: Option<&std::io::Error>,
) {
    let (Some(unconfirmed), Some(err)) = (unconfirmed, failure) else {
        return;
    };
    let window = shared.config.delivery_timeout + Duration::from_secs(5);
    if !lost_in_transit(err) || unconfirmed.written.elapsed() > window {
        return;
    }
    shared.metrics.answers_undelivered.inc();
    tracing::info!(
        mailbox = %unconfirmed.mailbox,
        device = %unconfirmed.device_id,
        error = %err,
        "a Status 2 did not reach the device; its folders are news again"
    );
    let shared = shared.clone();
    tokio::spawn(async move { reopen(&shared, &unconfirmed).await });
}

/// A connection that closes after an unconfirmed answer: our FIN goes out, and the device's
/// close (or its kernel's reset, or the user timeout) says whether it read the answer.
pub async fn linger<S: Transport>(
    shared: &Arc<Shared>,
    stream: &mut S,
    unconfirmed: Option<Box<Unconfirmed>>,
) {
    if unconfirmed.is_none() {
        return;
    }
    let mut failure = stream.shutdown().await.err();
    if failure.is_none() {
        let window = shared.config.delivery_timeout + Duration::from_secs(1);
        let mut scratch = [0u8; 512];
        let read_to_end = async {
            loop {
                match stream.read(&mut scratch).await {
                    Ok(0) => return None,
                    Ok(_) => continue,
                    Err(err) => return Some(err),
                }
            }
        };
        failure = tokio::time::timeout(window, read_to_end)
            .await
            .ok()
            .flatten();
    }
    settle(shared, unconfirmed, failure.as_ref());
}

/// Makes the folders news again and re-checks the device's parked Ping: on this pod directly,
/// on another through its wake subject.
async fn reopen(shared: &Shared, unconfirmed: &Unconfirmed) {
    let mut redis = shared.redis.clone();
    let call = shared
        .store
        .undelivered(&mut redis, unconfirmed.device(), &unconfirmed.versions);
    let owner = match tokio::time::timeout(shared.config.redis_timeout, call).await {
        Ok(Ok(owner)) => owner,
        Ok(Err(err)) => {
            shared.metrics.redis_errors.inc();
            tracing::warn!(mailbox = %unconfirmed.mailbox, device = %unconfirmed.device_id, error = %err, "an undelivered Status 2 could not be reopened in Redis; the device hears of it at its heartbeat's end at the latest");
            return;
        }
        Err(_) => {
            shared.metrics.redis_errors.inc();
            tracing::warn!(mailbox = %unconfirmed.mailbox, device = %unconfirmed.device_id, "Redis timed out reopening an undelivered Status 2");
            return;
        }
    };
    let Some(owner) = owner else { return };
    if owner.pod == shared.config.common.pod {
        shared
            .parked
            .tell(&unconfirmed.key, owner.request, |s| s.recheck = true);
        return;
    }
    let wake = WakeEvent {
        mailbox: unconfirmed.mailbox.clone(),
        folders: Vec::new(),
        targets: vec![WakeTarget {
            device: unconfirmed.key.to_string(),
            request: owner.request,
        }],
        accepted_at_us: dp_runtime::now_us(),
        hierarchy: false,
        recheck: true,
        stages: None,
    };
    let Ok(payload) = serde_json::to_vec(&wake) else {
        return;
    };
    let subject = shared.subjects.wake(&owner.pod);
    if let Err(err) = shared.nats.publish(subject, payload.into()).await {
        tracing::warn!(mailbox = %unconfirmed.mailbox, device = %unconfirmed.device_id, error = %err, "could not ask another pod to re-check a device; it hears of the change at its heartbeat's end at the latest");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn only_a_reset_or_a_timeout_says_the_answer_was_lost() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::TimedOut,
            ErrorKind::BrokenPipe,
        ] {
            assert!(lost_in_transit(&Error::from(kind)), "{kind:?}");
        }
        // A clean end of a TLS session without close_notify is still a close the device made.
        for kind in [
            ErrorKind::UnexpectedEof,
            ErrorKind::InvalidData,
            ErrorKind::Other,
        ] {
            assert!(!lost_in_transit(&Error::from(kind)), "{kind:?}");
        }
    }
}
