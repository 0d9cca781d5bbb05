//! dpctl: the directpush operator's command line.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod accounts;
mod change;
mod device;
mod eas_query;
mod http;
mod wbxml;

#[derive(Parser)]
#[command(
    name = "dpctl",
    version,
    about = "Operate and inspect a directpush cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode or encode EAS WBXML bodies.
    #[command(subcommand)]
    Wbxml(wbxml::WbxmlCommand),
    /// Show what a request query says, or build a base64 one.
    #[command(subcommand, name = "eas-query")]
    EasQuery(eas_query::QueryCommand),
    /// Manage the accounts that may Ping.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/directpush"
        )]
        database_url: String,
    },
    /// Inspect a device.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
        #[command(flatten)]
        stores: Stores,
    },
    /// Publish a change through the watcher's ingest API.
    Change {
        mailbox: String,
        #[arg(required = true)]
        folders: Vec<String>,
        /// added, modified or removed.
        #[arg(long, default_value = "added")]
        kind: String,
        #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:8081")]
        ingest_url: String,
        #[arg(long, env = "INGEST_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Succeed when a service's admin URL answers 200 (for container health checks).
    Health {
        #[arg(env = "HEALTH_URL", default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Owner pod, cached parameters, versions and the last history rows.
    Show { mailbox: String, device: String },
}

#[derive(clap::Args)]
struct Stores {
    #[arg(long = "namespace", env = "DP_NAMESPACE", default_value = "dp")]
    namespace: String,
    /// One server, or with `--redis-mode cluster` a Redis Cluster's seed nodes, comma-separated.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis_url: String,
    /// `single` or `cluster`, as the services are configured.
    #[arg(long, env = "REDIS_MODE", default_value = "single")]
    redis_mode: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/directpush"
    )]
    database_url: String,
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wbxml(command) => command.run(),
        Command::EasQuery(command) => command.run(),
        Command::Accounts {
            command,
            database_url,
        } => block_on(command.run(&database_url)),
        Command::Device {
            command: DeviceCommand::Show { mailbox, device },
            stores,
        } => block_on(device::show(
            &mailbox,
            &device,
            &stores.namespace,
            &stores.redis_mode,
            &stores.redis_url,
            &stores.database_url,
        )),
        Command::Change {
            mailbox,
            folders,
            kind,
            ingest_url,
            token,
        } => block_on(change::send(&ingest_url, &token, &mailbox, &folders, &kind)),
        Command::Health { url } => block_on(change::health(&url)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dpctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
