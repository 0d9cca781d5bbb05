//! `loadtest`: proves directpush under load. Scenarios (`park`, `wake`, `storm`, `carrier`)
//! run devices in `loadtest worker` processes against a local cluster started for the run or a
//! running deployment, and write a summary, `report.json` and PNG charts.
#![forbid(unsafe_code)]

mod balancer;
mod changes;
mod charts;
mod cluster;
mod device;
mod fleet;
mod handshakes;
mod middlebox;
mod plan;
mod probe;
mod report;
mod run;
mod scenario;
mod tls;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest", version, about = "directpush load tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Devices connect at a rate and park: connect rate, errors, memory per parked Ping.
    Park(scenario::park::ParkArgs),
    /// Changes for parked devices: wake latency and misses.
    Wake(scenario::wake::WakeArgs),
    /// Kill one frontend with its devices parked: time until all are parked again, misses.
    Storm(scenario::storm::StormArgs),
    /// Changes through failures: Redis restarted (with or without persistence), NATS restarted,
    /// a frontend killed, on private stores behind passwords; misses and duplicates.
    Chaos(scenario::chaos::ChaosArgs),
    /// Devices behind a carrier that drops idle connections: heartbeat convergence, lateness.
    Carrier(scenario::carrier::CarrierArgs),
    /// Proxy mode against a stand-in ActiveSync server: enrolment, wakes acknowledged by Sync.
    Proxy(scenario::wake::WakeArgs),
    /// Store sources against the local Dovecot: Lua delivery latency, its cost, the IMAP role.
    Store(scenario::store::StoreArgs),
    /// What a TLS set-up costs a frontend, full and resumed with a ticket (in process).
    Handshakes(handshakes::HandshakeArgs),
    /// One worker process (started by the scenarios; reads its plan on stdin).
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Park(args) => scenario::park::run(args).await.map(drop),
            Command::Wake(args) => scenario::wake::run(args).await.map(drop),
            Command::Storm(args) => scenario::storm::run(args).await.map(drop),
            Command::Chaos(args) => scenario::chaos::run(args).await.map(drop),
            Command::Carrier(args) => scenario::carrier::run(args).await.map(drop),
            Command::Proxy(args) => scenario::proxy::run(args).await.map(drop),
            Command::Store(args) => scenario::store::run(args).await.map(drop),
            Command::Handshakes(args) => handshakes::run(args).map(drop),
            Command::Worker => worker::run().await,
        }
    });
    // Child processes (workers, a local cluster) are killed as their handles drop.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
