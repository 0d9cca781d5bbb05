//! `ping-frontend [serve]` runs the frontend; `ping-frontend migrate` applies the database
//! migrations and exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dp_runtime::shutdown;
use ping_frontend::FrontendArgs;

#[derive(Parser)]
#[command(name = "ping-frontend", version, about = "directpush's Ping frontend")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: FrontendArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve devices (the default).
    Serve,
    /// Apply the database migrations and create the history partitions, then exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    dp_runtime::main(
        "ping-frontend",
        cli.args.check(),
        |c| (c.common.log_format, c.common.worker_threads),
        |config| async move {
            match command {
                Command::Migrate => {
                    let pool = dp_db::lazy_pool(&config.database_url, 1)?;
                    dp_db::migrate(&pool).await?;
                    tracing::info!("migrations applied");
                    Ok(())
                }
                Command::Serve => {
                    let listener = dp_runtime::listener::bind(
                        config.listen_addr,
                        config.listen_backlog,
                        config.reuse_port,
                    )?;
                    let admin =
                        dp_runtime::listener::bind(config.admin_addr, 1024, config.reuse_port)?;
                    let (stop, drain) = shutdown::Shutdown::new();
                    shutdown::on_signals(stop);
                    ping_frontend::run(config, listener, admin, drain).await
                }
            }
        },
    )
}
