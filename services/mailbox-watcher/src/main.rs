//! `mailbox-watcher` runs the watcher with the roles WATCHER_ROLES names.

use std::process::ExitCode;

use clap::Parser;
use dp_runtime::{logging, shutdown, EXIT_CONFIG};
use mailbox_watcher::WatcherArgs;

#[derive(Parser)]
#[command(
    name = "mailbox-watcher",
    version,
    about = "directpush's mailbox watcher"
)]
struct Cli {
    #[command(flatten)]
    args: WatcherArgs,
}

fn main() -> ExitCode {
    let config = match Cli::parse().args.check() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mailbox-watcher: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    logging::init(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mailbox-watcher: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let ingest = if config.ingest {
            Some(dp_runtime::listener::bind(config.listen_addr, 1024, false)?)
        } else {
            None
        };
        let admin = dp_runtime::listener::bind(config.admin_addr, 1024, false)?;
        let (stop, drain) = shutdown::Shutdown::new();
        shutdown::on_signals(stop);
        mailbox_watcher::run(config, ingest, admin, drain).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailbox-watcher: {err:#}");
            ExitCode::FAILURE
        }
    }
}
