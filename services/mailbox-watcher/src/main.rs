//! `mailbox-watcher` runs the watcher with the roles WATCHER_ROLES names.

use std::process::ExitCode;

use clap::Parser;
use dp_runtime::shutdown;
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
    let config = Cli::parse().args.check();
    dp_runtime::main(
        "mailbox-watcher",
        config,
        |c| (c.common.log_format, c.common.worker_threads),
        |config| async move {
            let ingest = if config.ingest {
                Some(dp_runtime::listener::bind(config.listen_addr, 1024, false)?)
            } else {
                None
            };
            let admin = dp_runtime::listener::bind(config.admin_addr, 1024, false)?;
            let (stop, drain) = shutdown::Shutdown::new();
            shutdown::on_signals(stop);
            mailbox_watcher::run(config, ingest, admin, drain).await
        },
    )
}
