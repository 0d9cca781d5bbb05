//! `storm`: one of several frontends dies with its devices parked; they reconnect with jitter
//! to the others. Time until all are parked again, with changes throughout and zero misses.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::report::Report;
use crate::run::{round, Run, RunArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct StormArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Which local frontend dies (SIGKILL).
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
    #[arg(long, default_value_t = 200.0)]
    pub changes_per_sec: f64,
    /// Seconds of changes before the kill, and after everyone is back.
    #[arg(long, default_value_t = 3)]
    pub calm_secs: u64,
    /// Most seconds to wait for everyone to park again.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,
    #[arg(long, default_value_t = 5)]
    pub window_secs: u64,
    #[arg(long, default_value_t = 8)]
    pub ingest_connections: usize,
}

pub async fn run(args: StormArgs) -> Result<serde_json::Value> {
    let mut run = Run::start(&args.run).await?;
    if run.cluster.frontends.len() < 2 || args.kill >= run.cluster.frontends.len() {
        bail!("a storm needs two or more local frontends and --kill naming one of them");
    }
    let mut report = Report::new("storm");
    let parked = run
        .park(super::fixed(args.run.heartbeat), &mut report)
        .await?;
    let injector = super::inject(&run, args.changes_per_sec, args.ingest_connections)?;
    tokio::time::sleep(Duration::from_secs(args.calm_secs)).await;
    let victim = &run.cluster.frontends[args.kill];
    let displaced = match victim.admin {
        Some(admin) => crate::probe::metric(admin, "dp_frontend_parked_pings")
            .await
            .unwrap_or(0.0),
        None => 0.0,
    };
    let survivors = Survivors::read(&run, args.kill).await;
    let killed = Instant::now();
    run.cluster.frontends[args.kill].kill().await?;
    let deadline = killed + Duration::from_secs(args.settle_secs);
    let mut back = run.parked().await.unwrap_or(0.0);
    while back < parked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        back = run.parked().await.unwrap_or(back);
    }
    let reparked_secs = killed.elapsed().as_secs_f64();
    survivors
        .report(&run, args.kill, displaced, &mut report)
        .await;
    tokio::time::sleep(Duration::from_secs(args.calm_secs)).await;
    let sent = injector.stop().await;
    report.set("displaced_devices", displaced);
    report.set("parked_again", back);
    report.set(
        "all_parked_again_secs",
        if back >= parked {
            round(reparked_secs)
        } else {
            f64::NAN
        },
    );
    report.set(
        "storm_reconnects_per_s",
        round(displaced / reparked_secs.max(0.001)),
    );
    super::settle(
        &run,
        &sent,
        Duration::from_secs(args.window_secs),
        &mut report,
    )
    .await?;
    run.finish(report).await
}

/// What the surviving frontends spent taking the displaced devices in: CPU, and with TLS the
/// handshakes by kind (resumed ones are the devices that came back with a ticket the survivors
/// could open: `--shared-ticket-keys`).
struct Survivors {
    cpu_secs: f64,
    handshakes: [f64; 2],
}

const KINDS: [&str; 2] = ["full", "resumed"];

impl Survivors {
    async fn read(run: &Run, victim: usize) -> Survivors {
        let (mut pids, mut handshakes) = (Vec::new(), [0.0; 2]);
        for (i, node) in run.cluster.frontends.iter().enumerate() {
            if i == victim {
                continue;
            }
            pids.extend(node.pid);
            let Some(admin) = node.admin else { continue };
            for (count, kind) in handshakes.iter_mut().zip(KINDS) {
                let series = format!("dp_frontend_tls_handshakes_total{{kind=\"{kind}\"}}");
                *count += crate::probe::metric(admin, &series).await.unwrap_or(0.0);
            }
        }
        Survivors {
            cpu_secs: crate::probe::total(&pids).cpu_secs,
            handshakes,
        }
    }

    async fn report(self, run: &Run, victim: usize, displaced: f64, report: &mut Report) {
        let now = Survivors::read(run, victim).await;
        let cpu = now.cpu_secs - self.cpu_secs;
        report.set("storm_survivors_cpu_secs", round(cpu));
        report.set(
            "storm_setups_per_survivor_cpu_sec",
            round(displaced / cpu.max(0.01)),
        );
        if run.cluster.tls_ca.is_some() {
            let mut kinds = serde_json::Map::new();
            for (i, kind) in KINDS.iter().enumerate() {
                kinds.insert(
                    kind.to_string(),
                    (now.handshakes[i] - self.handshakes[i]).into(),
                );
            }
            report.set("storm_tls_handshakes", serde_json::Value::Object(kinds));
        }
    }
}
