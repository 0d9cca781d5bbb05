//! The pod's NATS side: its own wake and evict subjects, subscribed before it serves, and a
//! re-check of every parked Ping after a reconnect (core NATS drops what was published to us
//! while we were away; Redis still knows).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Event};
use dp_proto::events::{EvictEvent, WakeEvent};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::parked::{End, WakeClock};
use crate::Shared;

/// Connects (retrying in the background until the server answers) and returns the client and
/// its connection events.
pub async fn connect(
    servers: &dp_runtime::nats::NatsServers,
    pod: &str,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Event>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = servers
        .options()
        .name(format!("ping-frontend/{pod}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(2000))
        })
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .connect(servers.addresses())
        .await?;
    Ok((client, rx))
}

/// Subscribes to the pod's subjects and waits until the server has them: only then may the
/// pod serve (ARCHITECTURE.md section 3).
pub async fn subscribe(
    shared: &Arc<Shared>,
    drain: &dp_runtime::shutdown::Drain,
) -> anyhow::Result<()> {
    let mut wakes = shared
        .nats
        .subscribe(shared.subjects.wake(&shared.config.common.pod))
        .await?;
    let mut evicts = shared
        .nats
        .subscribe(shared.subjects.evict(&shared.config.common.pod))
        .await?;
    let s = shared.clone();
    tokio::spawn(async move {
        while let Some(message) = wakes.next().await {
            let traceparent = message
                .headers
                .as_ref()
                .and_then(|h| h.get(dp_runtime::telemetry::TRACEPARENT))
                .map(|v| v.as_str());
            on_wake(&s, &message.payload, traceparent);
        }
    });
    let s = shared.clone();
    tokio::spawn(async move {
        while let Some(message) = evicts.next().await {
            on_evict(&s, &message.payload);
        }
    });
    let mut waited = 0u32;
    while let Err(err) = shared.nats.flush().await {
        if drain.is_signalled() {
            anyhow::bail!("shut down before NATS answered");
        }
        if waited.is_multiple_of(10) {
            tracing::warn!(error = %err, "waiting for NATS before serving");
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.state.subscribed.store(true, Ordering::Release);
    Ok(())
}

/// Tells the Pings a wake names, whichever way it came (NATS, or a direct link).
pub(crate) fn on_wake(shared: &Shared, payload: &[u8], traceparent: Option<&str>) {
    let wake: WakeEvent = match serde_json::from_slice(payload) {
        Ok(wake) => wake,
        Err(err) => {
            tracing::warn!(error = %err, "wake event ignored: not a WakeEvent");
            return;
        }
    };
    let clock = WakeClock {
        accepted_us: wake.accepted_at_us,
        received_us: dp_runtime::now_us(),
    };
    if let Some(stages) = &wake.stages {
        shared.metrics.observe_wake_stages(&clock, stages);
    }
    for target in &wake.targets {
        shared.parked.tell(&target.device, target.request, |s| {
            s.changes.extend(wake.folders.iter().cloned());
            s.clock = Some(WakeClock::merge(s.clock, clock));
            if s.traceparent.is_none() {
                s.traceparent = traceparent.map(str::to_owned);
            }
            if wake.hierarchy {
                s.end = Some(End::Hierarchy);
            }
            // A store folder means other ServerIds on each device: Redis knows which.
            s.recheck |= wake.recheck;
        });
    }
}

fn on_evict(shared: &Shared, payload: &[u8]) {
    match serde_json::from_slice::<EvictEvent>(payload) {
        Ok(evict) => {
            shared.parked.tell(&evict.device, evict.request, |s| {
                s.end = Some(End::Superseded)
            });
        }
        Err(err) => tracing::warn!(error = %err, "evict event ignored: not an EvictEvent"),
    }
}

/// Watches connection events: after every (re)connect, once the server has our subscriptions
/// again, every parked Ping re-checks Redis for news it may have missed.
pub fn watch_connection(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<Event>) {
    tokio::spawn(async move {
        let mut connected_before = false;
        while let Some(event) = events.recv().await {
            match event {
                Event::Connected => {
                    if connected_before {
                        shared.metrics.nats_reconnects.inc();
                    }
                    connected_before = true;
                    if let Err(err) = shared.nats.flush().await {
                        tracing::warn!(error = %err, "NATS flush after reconnect failed");
                    }
                    let parked = shared.parked.tell_all(|s| s.recheck = true);
                    tracing::info!(
                        parked,
                        "NATS connected; parked Pings re-check for missed changes"
                    );
                }
                Event::SlowConsumer(_) => {
                    // The client dropped messages of a subscription it could not keep up
                    // with: wakes may be among them, so every parked Ping looks in Redis.
                    let parked = shared.parked.tell_all(|s| s.recheck = true);
                    tracing::warn!(
                        parked,
                        "NATS slow consumer: wakes may have been dropped; parked Pings re-check"
                    );
                }
                Event::Disconnected => {
                    tracing::warn!(
                        "NATS disconnected; wakes for this pod are lost until it reconnects"
                    )
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        }
    });
}
