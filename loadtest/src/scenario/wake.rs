//! `wake`: with the devices parked, changes for random devices; latency from the ingest
//! request to the device reading Status 2, and misses.

use std::time::Duration;

use anyhow::Result;

use crate::report::Report;
use crate::run::{round, Run, RunArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct WakeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 2_000.0)]
    pub changes_per_sec: f64,
    /// Seconds of changes.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// A change its device has not heard of within this many seconds is a miss.
    #[arg(long, default_value_t = 5)]
    pub window_secs: u64,
    /// Keep-alive connections changes are sent over.
    #[arg(long, default_value_t = 16)]
    pub ingest_connections: usize,
}

pub async fn run(args: WakeArgs) -> Result<serde_json::Value> {
    let mut run = Run::start(&args.run).await?;
    let mut report = Report::new("wake");
    run.park(super::fixed(args.run.heartbeat), &mut report)
        .await?;
    changes(&run, &args, &mut report).await?;
    report.set("parked_after", run.parked().await);
    run.finish(report).await
}

/// With the devices parked: changes at the set rate for the set time, then their wakes
/// matched (latency, misses). The `proxy` scenario runs the same phase.
pub async fn changes(run: &Run, args: &WakeArgs, report: &mut Report) -> Result<()> {
    let injector = super::inject(run, args.changes_per_sec, args.ingest_connections)?;
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    let sent = injector.stop().await;
    report.set(
        "changes_per_sec_sent",
        round(sent.len() as f64 / args.duration_secs.max(1) as f64),
    );
    super::settle(run, &sent, Duration::from_secs(args.window_secs), report).await?;
    Ok(())
}
