//! `chaos`: changes at a steady rate while the stores and a pod fail, on a local cluster whose
//! Redis and NATS are private servers behind passwords (started here, so they can be
//! restarted): a quarter of the way in Redis restarts (with its append-only file, or without
//! persistence: every key gone), halfway NATS restarts, at three quarters a frontend is killed.
//! Misses must be 0 (I1); the duplicates the failures cost are reported.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dp_testkit::stores::{LocalNats, LocalRedis};

use crate::report::Report;
use crate::run::{round, Run, RunArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Changes in all.
    #[arg(long, default_value_t = 100_000)]
    pub changes: usize,
    #[arg(long, default_value_t = 1_000.0)]
    pub changes_per_sec: f64,
    /// Redis keeps an append-only file (as compose and the chart run it); false: a restart
    /// forgets every key.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub redis_persistence: bool,
    /// Which local frontend is killed (SIGKILL).
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
    /// A change its device has not heard of within this many seconds is a miss (devices that
    /// lost their Ping reconnect within --jitter-ms, then hear it).
    #[arg(long, default_value_t = 30)]
    pub window_secs: u64,
    #[arg(long, default_value_t = 8)]
    pub ingest_connections: usize,
}

pub async fn run(mut args: ChaosArgs) -> Result<serde_json::Value> {
    if args.run.cluster.local_frontends < 2 || args.kill >= args.run.cluster.local_frontends {
        bail!("chaos needs two or more local frontends and --kill naming one of them");
    }
    let mut redis = LocalRedis::start(&secret(), args.redis_persistence)
        .await
        .context("a private redis-server")?;
    let mut nats = LocalNats::start("directpush", &secret())
        .await
        .context("a private nats-server")?;
    args.run.cluster.redis_url = redis.url();
    args.run.cluster.redis_mode = "single".into();
    args.run.cluster.nats_url = nats.url();
    let mut run = Run::start(&args.run).await?;
    let mut report = Report::new("chaos");
    report.set("redis_persistence", args.redis_persistence);
    run.park(super::fixed(args.run.heartbeat), &mut report)
        .await?;
    let injector = super::inject(&run, args.changes_per_sec, args.ingest_connections)?;
    let duration = Duration::from_secs_f64(args.changes as f64 / args.changes_per_sec.max(1.0));
    let started = Instant::now();
    let at = |fraction: f64| started + duration.mul_f64(fraction);

    tokio::time::sleep_until(at(0.25).into()).await;
    let t = Instant::now();
    redis.restart().await.context("restarting Redis")?;
    report.set("redis_down_secs", round(t.elapsed().as_secs_f64()));

    tokio::time::sleep_until(at(0.5).into()).await;
    let t = Instant::now();
    nats.restart().await.context("restarting NATS")?;
    report.set("nats_down_secs", round(t.elapsed().as_secs_f64()));

    tokio::time::sleep_until(at(0.75).into()).await;
    run.cluster.frontends[args.kill].kill().await?;

    tokio::time::sleep_until(at(1.0).into()).await;
    let sent = injector.stop().await;
    report.set(
        "changes_per_sec_sent",
        round(sent.len() as f64 / duration.as_secs_f64().max(0.001)),
    );
    let matched = super::settle(
        &run,
        &sent,
        Duration::from_secs(args.window_secs),
        &mut report,
    )
    .await?;
    report.set("parked_after", run.parked().await);
    let mut losses = 0.0;
    for admin in run.cluster.frontends.iter().filter_map(|n| n.admin) {
        losses += crate::probe::metric(admin, "dp_frontend_redis_state_losses_total")
            .await
            .unwrap_or(0.0);
    }
    report.set("redis_state_losses_seen", losses);
    let out = run.finish(report).await?;
    drop((redis, nats));
    if !matched.misses.is_empty() {
        bail!("{} changes were not heard (I1)", matched.misses.len());
    }
    Ok(out)
}

fn secret() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}
