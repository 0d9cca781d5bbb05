//! `loadtest worker`: one process's share of the devices. Reads its [`Plan`] as the first line
//! on stdin, reports [`Event`]s on stdout, and exits when stdin closes (the coordinator ended).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::device::{self, Credential, Shared};
use crate::plan::{now_us, Event, Plan};

pub async fn run() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .context("no plan on stdin: `loadtest worker` is started by the other subcommands")?;
    let plan: Plan = serde_json::from_str(&line).context("the plan line")?;
    anyhow::ensure!(!plan.frontends.is_empty(), "the plan names no frontend");
    anyhow::ensure!(!plan.sources.is_empty(), "the plan names no source address");
    let (events, mut outbox) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        tls: plan
            .tls_ca
            .as_deref()
            .map(|ca| crate::tls::devices_config(ca, plan.tls12))
            .transpose()?,
        credential: Credential::new(&plan.auth),
        plan,
        events,
    });
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
        while let Some(event) = outbox.recv().await {
            out.write_all(event.line().as_bytes()).await?;
            out.write_all(b"\n").await?;
            if outbox.is_empty() {
                out.flush().await?;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    tokio::spawn(launch(shared.clone()));
    // Whatever the coordinator writes after the plan, or its exit, ends the run.
    let _ = stdin.next_line().await;
    drop(shared);
    writer.abort();
    Ok(())
}

/// Starts the devices at the plan's rate.
async fn launch(shared: Arc<Shared>) {
    let plan = &shared.plan;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate.max(0.001)));
    for number in plan.first..plan.first + plan.count {
        ticker.tick().await;
        tokio::spawn(device::run(number, shared.clone()));
    }
    let _ = shared.events.send(Event::Launched { at_us: now_us() });
}
