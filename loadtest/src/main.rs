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
mod interrupt;
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

impl Command {
    async fn run(self) -> anyhow::Result<()> {
        match self {
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
    }

    /// The local cluster this command starts, if any: an interrupted run clears its namespace
    /// as a finished one does.
    fn local_cluster(&self) -> Option<cluster::ClusterArgs> {
        let run = match self {
            Command::Park(args) => &args.run,
            Command::Wake(args) | Command::Proxy(args) => &args.run,
            Command::Storm(args) => &args.run,
            Command::Chaos(args) => &args.run,
            Command::Carrier(args) => &args.run,
            Command::Store(_) | Command::Handshakes(_) | Command::Worker => return None,
        };
        let cluster = &run.cluster;
        (cluster.local_frontends > 0).then(|| cluster.clone())
    }
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
    let local = cli.command.local_cluster();
    // A worker holds only its devices' sockets: the default action ends it, quietly.
    let handles_signals = !matches!(cli.command, Command::Worker);
    let outcome = runtime.block_on(async move {
        tokio::select! {
            result = cli.command.run() => Outcome::Done(result),
            signal = dp_runtime::shutdown::received(), if handles_signals => Outcome::Interrupted(signal),
        }
    });
    // Child processes (workers, a local cluster) are killed as their handles drop: the select
    // above dropped them with the scenario's future, whichever way it ended.
    let code = match outcome {
        Outcome::Done(Ok(())) => ExitCode::SUCCESS,
        Outcome::Done(Err(e)) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
        Outcome::Interrupted(signal) => runtime.block_on(interrupt::wind_up(signal, local)),
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

enum Outcome {
    Done(anyhow::Result<()>),
    Interrupted(dp_runtime::shutdown::Signal),
}
