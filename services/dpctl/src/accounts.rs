//! `dpctl accounts add|disable|enable|list`.

use std::io::BufRead;

use anyhow::{Context, Result};
use clap::Subcommand;
use dp_proto::ids::canonical_mailbox;

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Add an account (or set its password and enable it); the password is read from stdin,
    /// or from the environment variable `--password-env` names (for containers without a shell).
    Add {
        name: String,
        #[arg(long, value_name = "VARIABLE")]
        password_env: Option<String>,
    },
    /// Refuse the account's Pings from now on (cached credentials expire within
    /// AUTH_CACHE_TTL_SECS).
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    List,
}

impl AccountsCommand {
    pub async fn run(self, database_url: &str) -> Result<()> {
        let pool = dp_db::lazy_pool(database_url, 1)?;
        match self {
            AccountsCommand::Add { name, password_env } => {
                let name = canonical_mailbox(&name);
                let mut password = String::new();
                match password_env {
                    Some(variable) => {
                        password = std::env::var(&variable)
                            .with_context(|| format!("--password-env: {variable} is not set"))?;
                    }
                    None => {
                        std::io::stdin()
                            .lock()
                            .read_line(&mut password)
                            .context("reading the password from stdin")?;
                    }
                }
                let password = password.trim_end_matches(['\r', '\n']);
                dp_db::accounts::upsert(&pool, &name, password).await?;
                println!("account {name} added");
            }
            AccountsCommand::Disable { name } => {
                dp_db::accounts::set_disabled(&pool, &canonical_mailbox(&name), true).await?;
                println!("account {name} disabled");
            }
            AccountsCommand::Enable { name } => {
                dp_db::accounts::set_disabled(&pool, &canonical_mailbox(&name), false).await?;
                println!("account {name} enabled");
            }
            AccountsCommand::List => {
                for account in dp_db::accounts::list(&pool).await? {
                    println!(
                        "{}\t{}\t{}",
                        account.name,
                        if account.disabled {
                            "disabled"
                        } else {
                            "enabled"
                        },
                        account.created_at.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                }
            }
        }
        Ok(())
    }
}
