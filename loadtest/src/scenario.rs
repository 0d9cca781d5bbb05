//! The scenarios, one file each: `park`, `wake`, `storm`, `chaos`, `carrier`, `proxy` and
//! `store`.

pub mod carrier;
pub mod chaos;
pub mod park;
pub mod proxy;
pub mod store;
pub mod storm;
pub mod wake;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::changes::{self, Injector, Sent};
use crate::charts;
use crate::plan::{Auth, Heartbeat};
use crate::report::{percentiles_ms, Report};
use crate::run::Run;

/// A fixed heartbeat of `seconds`.
pub fn fixed(seconds: u32) -> Heartbeat {
    Heartbeat {
        start: seconds,
        step: 0,
        max: seconds,
        grace_secs: 30.0,
    }
}

/// Changes at `per_sec` for random devices' mailboxes, through the cluster's ingest API.
pub fn inject(run: &Run, per_sec: f64, connections: usize) -> Result<Injector> {
    let ingest = run
        .cluster
        .ingest
        .context("changes need the watcher's ingest address (--ingest, or a local cluster)")?;
    Ok(Injector::start(
        ingest,
        run.cluster.ingest_token.clone(),
        &run.cluster.auth,
        run.args.devices,
        per_sec,
        connections,
    ))
}

/// The devices that watch mailbox `m`.
pub fn devices_of(auth: &Auth, devices: usize) -> impl Fn(usize) -> Vec<usize> {
    let mailboxes = auth.mailboxes(devices);
    move |m| (m..devices).step_by(mailboxes).collect()
}

/// Waits `window` for the last wakes, then matches them with `sent` and reports latency and
/// misses (a change whose device did not hear of it within `window`).
pub async fn settle(
    run: &Run,
    sent: &[Sent],
    window: Duration,
    report: &mut Report,
) -> Result<changes::Matched> {
    tokio::time::sleep(window).await;
    let (wakes, syncs) = run
        .collected
        .lock()
        .map(|c| (c.wakes.clone(), c.syncs.clone()))
        .unwrap_or_default();
    let m = changes::matched(
        sent,
        &wakes,
        &syncs,
        devices_of(&run.cluster.auth, run.args.devices),
        window.as_micros() as u64,
    );
    report.set("changes_sent", sent.len());
    report.set("changes_refused", m.refused);
    report.set("wake_latency", percentiles_ms(&m.latencies_us));
    report.set("missed_wakes", m.misses.len());
    if !syncs.is_empty() {
        report.set("changes_heard_by_sync", m.heard_by_sync);
    }
    report.set("duplicate_wakes", m.duplicates);
    if !m.misses.is_empty() {
        let first: Vec<_> = m
            .misses
            .iter()
            .take(10)
            .map(|(at, d)| json!({"device": d, "sent_at_us": at}))
            .collect();
        report.set("first_misses", json!(first));
    }
    server_side(run, report).await;
    if let Err(e) = charts::latency(
        &run.args.out,
        "latency.png",
        "Wake latency (ingest request to Status 2 read)",
        &m.latencies_us,
    ) {
        eprintln!("no latency chart: {e:#}");
    }
    Ok(m)
}

/// The services' own view of the same wakes, from their histograms (bucket upper bounds):
/// acceptance to wake sent (watcher) and acceptance to Status 2 written (frontends).
async fn server_side(run: &Run, report: &mut Report) {
    let admins =
        |nodes: &[crate::cluster::Node]| nodes.iter().filter_map(|n| n.admin).collect::<Vec<_>>();
    for (key, nodes, name) in [
        (
            "server_dispatch_lag_ms",
            admins(&run.cluster.watchers),
            "dp_watcher_dispatch_lag_seconds",
        ),
        (
            "server_wake_latency_ms",
            admins(&run.cluster.frontends),
            "dp_frontend_wake_latency_seconds",
        ),
    ] {
        let buckets = crate::probe::histogram(&nodes, name).await;
        let at = |q| crate::probe::bucket_quantile(&buckets, q).map(|s| s * 1000.0);
        if buckets.is_empty() {
            continue;
        }
        report.set(
            key,
            json!({"p50_le": at(0.5), "p99_le": at(0.99), "p999_le": at(0.999)}),
        );
    }
    // The stage budget: where a wake's time goes, hop by hop (the frontends' histograms of the
    // watcher's stamps and their own).
    let frontends = admins(&run.cluster.frontends);
    let mut stages = serde_json::Map::new();
    for stage in [
        "durable", "queued", "coalesce", "bump", "publish", "deliver", "answer",
    ] {
        let labels = format!("stage=\"{stage}\"");
        let buckets =
            crate::probe::histogram_of(&frontends, "dp_frontend_wake_stage_seconds", &labels).await;
        let at = |q| crate::probe::bucket_quantile(&buckets, q).map(|s| s * 1000.0);
        if buckets.last().is_some_and(|b| b.1 > 0.0) {
            stages.insert(stage.into(), json!({"p50_le": at(0.5), "p99_le": at(0.99)}));
        }
    }
    if !stages.is_empty() {
        report.set("server_stage_ms", serde_json::Value::Object(stages));
    }
}
