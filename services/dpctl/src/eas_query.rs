//! `dpctl eas-query decode|encode`: what a request query says, and base64 queries built to order.

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use dp_proto::query::{Command, EasRequest, ProtocolVersion, QueryForm};

#[derive(Subcommand)]
pub enum QueryCommand {
    /// Show every field of a query (the part after `?`), plain or base64.
    Decode { query: String },
    /// Build a base64 query.
    Encode {
        #[arg(long, default_value = "Ping")]
        cmd: String,
        #[arg(long)]
        device_id: String,
        #[arg(long, default_value = "SmartPhone")]
        device_type: String,
        #[arg(long)]
        user: Option<String>,
        /// 12.1, 14.0, 14.1, 16.0 or 16.1.
        #[arg(long, default_value = "14.1")]
        version: String,
        /// Locale id, decimal or 0x hex.
        #[arg(long, default_value = "0x0409")]
        locale: String,
        #[arg(long)]
        policy_key: Option<u32>,
        /// Extra parameters as Name=Value (CollectionId, ItemId, LongId, Occurrence,
        /// AttachmentName, Options).
        #[arg(long = "param")]
        params: Vec<String>,
    },
}

impl QueryCommand {
    pub fn run(self) -> Result<()> {
        match self {
            QueryCommand::Decode { query } => {
                let query = query.split_once('?').map_or(query.as_str(), |(_, q)| q);
                print!("{}", describe(&EasRequest::parse_query(query)?));
                Ok(())
            }
            QueryCommand::Encode {
                cmd,
                device_id,
                device_type,
                user,
                version,
                locale,
                policy_key,
                params,
            } => {
                let request = EasRequest {
                    form: QueryForm::Base64,
                    command: Command::from_name(&cmd)
                        .ok_or_else(|| anyhow!("unknown command {cmd:?}"))?,
                    user,
                    device_id,
                    device_type,
                    version: Some(
                        ProtocolVersion::parse(&version)
                            .ok_or_else(|| anyhow!("unknown protocol version {version:?}"))?,
                    ),
                    locale: Some(parse_locale(&locale)?),
                    policy_key,
                    params: params
                        .iter()
                        .map(|p| {
                            p.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .ok_or_else(|| anyhow!("--param {p:?} is not Name=Value"))
                        })
                        .collect::<Result<_>>()?,
                };
                let text = request.to_base64().ok_or_else(|| {
                    anyhow!("the base64 form cannot carry this: versions before 12.1, fields over 255 bytes or unknown parameters")
                })?;
                println!("{text}");
                Ok(())
            }
        }
    }
}

fn parse_locale(text: &str) -> Result<u16> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .with_context(|| format!("locale {text:?} is not a 16-bit number"))
}

fn describe(request: &EasRequest) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<12} {value}\n"));
    line("form", format!("{:?}", request.form).to_lowercase());
    line(
        "command",
        format!(
            "{} (code {})",
            request.command.name(),
            request.command.code()
        ),
    );
    if let Some(version) = request.version {
        line("version", version.as_str().to_owned());
    }
    if let Some(locale) = request.locale {
        line("locale", format!("{locale:#06x}"));
    }
    line(
        "user",
        request
            .user
            .clone()
            .unwrap_or_else(|| "(from credentials)".into()),
    );
    line("device-id", request.device_id.clone());
    line("device-type", request.device_type.clone());
    if let Some(key) = request.policy_key {
        line("policy-key", key.to_string());
    }
    for (name, value) in &request.params {
        line(name, value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_spec_example() {
        let request =
            EasRequest::parse_query("jRIJBAp2MTQwRGV2aWNlAApTbWFydFBob25l").expect("parses");
        let text = describe(&request);
        assert!(text.contains("Ping (code 18)"), "{text}");
        assert!(
            text.contains("v140Device") && text.contains("0x0409"),
            "{text}"
        );
        assert_eq!(parse_locale("0x0409").expect("hex"), 0x0409);
        assert_eq!(parse_locale("1033").expect("decimal"), 1033);
        assert!(parse_locale("0xZZ").is_err());
    }
}
