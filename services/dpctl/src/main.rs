//! dpctl: the directpush operator's command line.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod eas_query;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wbxml(command) => command.run(),
        Command::EasQuery(command) => command.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dpctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
