//! `NATS_URL` with credentials, as operators write it for every other store:
//! `nats://user:password@host:4222` (or `nats://token@host:4222`), several servers
//! comma-separated. The client library ignores credentials in a URL, so they are taken out here
//! and handed to it as options; what is left names the servers and is safe to log.

use async_nats::ConnectOptions;
use percent_encoding::percent_decode_str;

use crate::ConfigError;

/// The servers (without credentials) and the credentials they share.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsServers {
    pub servers: Vec<String>,
    auth: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for NatsServers {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServers")
            .field("servers", &self.servers)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl NatsServers {
    pub fn parse(value: &str) -> Result<NatsServers, ConfigError> {
        let invalid = |reason: &str| ConfigError::new("NATS_URL", reason.to_owned());
        let mut servers = Vec::new();
        let mut auth = None;
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scheme, rest) = item
                .split_once("://")
                .ok_or_else(|| invalid("each server is scheme://host:port (nats, tls, ws, wss)"))?;
            if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
                return Err(invalid("each server's scheme is nats, tls, ws or wss"));
            }
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (credentials, host) = match authority.rsplit_once('@') {
                Some((credentials, host)) => (Some(credentials), host),
                None => (None, authority),
            };
            if host.is_empty() {
                return Err(invalid("a server has no host"));
            }
            if let Some(credentials) = credentials {
                let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
                let parsed = match credentials.split_once(':') {
                    Some((user, password)) => (decode(user), Some(decode(password))),
                    None => (decode(credentials), None),
                };
                if auth.as_ref().is_some_and(|a| a != &parsed) {
                    return Err(invalid("the servers name different credentials"));
                }
                auth = Some(parsed);
            }
            servers.push(format!("{scheme}://{host}{path}"));
        }
        if servers.is_empty() {
            return Err(invalid("no server given"));
        }
        Ok(NatsServers { servers, auth })
    }

    /// Options carrying the credentials; connect them to [`NatsServers::servers`].
    pub fn options(&self) -> ConnectOptions {
        match &self.auth {
            None => ConnectOptions::new(),
            Some((user, Some(password))) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Some((token, None)) => ConnectOptions::with_token(token.clone()),
        }
    }

    /// The servers as the client's `connect` takes them.
    pub fn addresses(&self) -> Vec<async_nats::ServerAddr> {
        self.servers.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_urls_and_stay_out_of_debug() {
        let parsed =
            NatsServers::parse("nats://dp:p%40ss@nats-0:4222, nats://dp:p%40ss@nats-1:4222")
                .expect("valid");
        assert_eq!(parsed.servers, ["nats://nats-0:4222", "nats://nats-1:4222"]);
        assert_eq!(parsed.auth, Some(("dp".into(), Some("p@ss".into()))));
        assert_eq!(parsed.addresses().len(), 2);
        assert!(!format!("{parsed:?}").contains("p@ss"));
        let token = NatsServers::parse("tls://s3cret@nats:4222").expect("valid");
        assert_eq!(token.auth, Some(("s3cret".into(), None)));
        let plain = NatsServers::parse("nats://127.0.0.1:4222").expect("valid");
        assert_eq!(plain.auth, None);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for bad in [
            "",
            "127.0.0.1:4222",
            "http://nats:4222",
            "nats://",
            "nats://a:b@x:1,nats://c:d@y:1",
        ] {
            let err = NatsServers::parse(bad).expect_err(bad);
            assert_eq!(err.setting, "NATS_URL");
            assert!(!err.to_string().contains(":b@"), "{err}");
        }
    }
}
