//! Logging convention: messages readable alone ("parked Ping answered"), ids as fields
//! (`mailbox`, `device`, `request`, `pod`), errors logged once where they are handled, secrets
//! (passwords, tokens, Authorization headers) never.

use tracing_subscriber::{fmt, EnvFilter};

/// `LOG_FORMAT`: `json` for containers, `text` for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!("{other:?} is neither json nor text")),
        }
    }
}

/// Installs the global subscriber, filtered by `RUST_LOG` (default `info`). A second call (tests
/// start several services in one process) keeps the first.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
