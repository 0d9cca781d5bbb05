//! `carrier`: devices behind a middlebox that silently drops connections idle longer than a
//! timeout, adapting their heartbeat the Direct Push way. How long they take to settle below
//! the timeout, and how late the changes are that arrive while a connection is silently dead.
//! Time is scaled: `--minute-secs` real seconds stand for one minute.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::middlebox::Middlebox;
use crate::plan::Heartbeat;
use crate::report::{percentiles_ms, Report};
use crate::run::{round, Run, RunArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct CarrierArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Real seconds per minute of the scenario's time.
    #[arg(long, default_value_t = 1.0)]
    pub minute_secs: f64,
    /// The carrier drops connections idle this many minutes.
    #[arg(long, default_value_t = 13.0)]
    pub idle_min: f64,
    /// The devices' first heartbeat, their step up after a heartbeat answered, and the most
    /// they try, in minutes.
    #[arg(long, default_value_t = 4.0)]
    pub start_min: f64,
    #[arg(long, default_value_t = 2.0)]
    pub step_min: f64,
    #[arg(long, default_value_t = 28.0)]
    pub max_min: f64,
    /// Minutes a device waits past its heartbeat before it gives up on a Ping.
    #[arg(long, default_value_t = 1.0)]
    pub grace_min: f64,
    /// The same in real seconds, not scaled by `--minute-secs`: the delays a grace absorbs
    /// (the network, a busy server or machine) do not shrink with the scenario's minute.
    #[arg(long)]
    pub grace_secs: Option<f64>,
    /// Minutes the scenario runs.
    #[arg(long, default_value_t = 60.0)]
    pub duration_min: f64,
    #[arg(long, default_value_t = 20.0)]
    pub changes_per_sec: f64,
    /// A change heard later than this many milliseconds counts as late (it waited out a
    /// connection the carrier had dropped).
    #[arg(long, default_value_t = 250)]
    pub late_ms: u64,
}

pub async fn run(args: CarrierArgs) -> Result<serde_json::Value> {
    let scale = |minutes: f64| minutes * args.minute_secs;
    let secs = |minutes: f64| scale(minutes).round().max(1.0) as u32;
    let mut run = Run::start(&args.run).await?;
    let idle = Duration::from_secs_f64(scale(args.idle_min));
    let mut boxes = Vec::new();
    for node in &run.cluster.frontends {
        boxes.push(Middlebox::start(node.addr, idle).await?);
    }
    let heartbeat = Heartbeat {
        start: secs(args.start_min),
        step: secs(args.step_min),
        max: secs(args.max_min),
        grace_secs: args.grace_secs.unwrap_or_else(|| scale(args.grace_min)),
    };
    let mut report = Report::new("carrier");
    report.set("minute_secs", args.minute_secs);
    report.set("carrier_idle_min", args.idle_min);
    run.launch(
        heartbeat.clone(),
        Some(boxes.iter().map(|b| b.addr).collect()),
    )
    .await?;
    // A device's first Ping sets its baseline: changes before it are not news to it.
    let parked = run.wait_parked(run.args.devices as f64).await?;
    report.set("parked", parked);
    let injector = super::inject(&run, args.changes_per_sec, 4)?;
    let started_us = crate::plan::now_us();
    tokio::time::sleep(Duration::from_secs_f64(scale(args.duration_min))).await;
    let sent = injector.stop().await;
    // A change sent while a connection is dead is heard when the device gives up on it:
    // allow the longest heartbeat and its grace, then the usual 5 s.
    let window = Duration::from_secs_f64(f64::from(heartbeat.max) + heartbeat.grace_secs + 5.0);
    let matched = super::settle(&run, &sent, window, &mut report).await?;
    // Delays over --late-ms: changes that waited out a dead connection.
    let late: Vec<u64> = matched
        .latencies_us
        .iter()
        .copied()
        .filter(|&us| us > args.late_ms * 1000)
        .collect();
    report.set("late_changes", late.len());
    report.set("late_change_delay", percentiles_ms(&late));
    report.set(
        "silently_dropped_connections",
        boxes.iter().map(Middlebox::dropped).sum::<u64>(),
    );
    let heartbeats = run
        .collected
        .lock()
        .map(|c| c.heartbeats.clone())
        .unwrap_or_default();
    report.set(
        "convergence",
        convergence(
            &heartbeats,
            started_us,
            args.minute_secs,
            args.idle_min,
            run.args.devices,
        ),
    );
    run.finish(report).await
}

/// Where each device's heartbeat ended and when it got there.
fn convergence(
    heartbeats: &[(usize, u32, u64)],
    started_us: u64,
    minute_secs: f64,
    idle_min: f64,
    devices: usize,
) -> serde_json::Value {
    let mut last: HashMap<usize, (u32, u64)> = HashMap::new();
    for &(device, seconds, at) in heartbeats {
        last.insert(device, (seconds, at));
    }
    let mut settled_at: Vec<u64> = last
        .values()
        .map(|(_, at)| at.saturating_sub(started_us))
        .collect();
    settled_at.sort_unstable();
    let mut finals: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (seconds, _) in last.values() {
        *finals
            .entry(format!("{}", round(f64::from(*seconds) / minute_secs)))
            .or_default() += 1;
    }
    let below = last
        .values()
        .filter(|(s, _)| f64::from(*s) / minute_secs < idle_min)
        .count();
    json!({
        "devices_that_adapted": last.len(),
        "devices": devices,
        "final_heartbeat_min_counts": finals,
        "final_below_carrier_timeout": below,
        "settled_after_secs": percentiles_ms(&settled_at).as_object().map(|o| {
            o.iter()
                .filter(|(k, _)| k.ends_with("_ms"))
                .map(|(k, v)| (k.replace("_ms", "_s"), json!(v.as_f64().map(|ms| round(ms / 1000.0)))))
                .collect::<serde_json::Map<_, _>>()
        }),
    })
}
