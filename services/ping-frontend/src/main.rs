//! `ping-frontend [serve]` runs the frontend; `ping-frontend migrate` applies the database
//! migrations and exits.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dp_runtime::{logging, shutdown, EXIT_CONFIG};
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
    let config = match cli.args.check() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ping-frontend: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    logging::init(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ping-frontend: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
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
                let admin = dp_runtime::listener::bind(config.admin_addr, 1024, config.reuse_port)?;
                let (stop, drain) = shutdown::Shutdown::new();
                shutdown::on_signals(stop);
                ping_frontend::run(config, listener, admin, drain).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "ping-frontend stopped");
            eprintln!("ping-frontend: {err:#}");
            ExitCode::FAILURE
        }
    }
}
