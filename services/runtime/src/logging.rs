//! Logging convention: messages readable alone ("parked Ping answered"), ids as fields
//! (`mailbox`, `device`, `request`, `pod`), errors logged once where they are handled, secrets
//! (passwords, tokens, Authorization headers) never.

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
