//! `park`: devices connect at a rate and park; connect rate, errors, memory per parked Ping.

use std::time::Duration;

use anyhow::Result;

use crate::report::Report;
use crate::run::{Run, RunArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct ParkArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Seconds to keep the devices parked after they are all in (parked over time keeps
    /// being recorded).
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
}

pub async fn run(args: ParkArgs) -> Result<serde_json::Value> {
    let mut run = Run::start(&args.run).await?;
    let mut report = Report::new("park");
    run.park(super::fixed(args.run.heartbeat), &mut report)
        .await?;
    if args.hold_secs > 0 {
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
        report.set("parked_after_hold", run.parked().await);
    }
    run.finish(report).await
}
