//! The watcher's settings, checked before any port is bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use dp_proto::events::ChangeKind;
use dp_runtime::{parse_addr, ConfigError};

use crate::store_folder::StoreNames;

#[derive(clap::Args, Clone, Debug)]
pub struct WatcherArgs {
    /// The ingest API (`POST /v1/changes`).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub listen_addr: String,
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9091")]
    pub admin_addr: String,
    #[command(flatten)]
    pub common: dp_runtime::CommonArgs,
    /// Bearer token the ingest API requires (at least 16 characters).
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
    /// What this process does: `ingest`, `dispatch`, `imap` (comma-separated).
    #[arg(long, env = "WATCHER_ROLES", default_value = "ingest,dispatch")]
    pub roles: String,
    /// Change kinds that wake a parked Ping; the others only bump versions.
    #[arg(long, env = "WAKE_ON", default_value = "added")]
    pub wake_on: String,
    /// When more than one change is waiting (a burst under way), how long a dispatcher waits
    /// for the rest of it before dispatching; a lone change never waits.
    #[arg(long, env = "COALESCE_MS", default_value_t = 2)]
    pub coalesce_ms: u64,
    /// With the dispatch role: changes this process takes in (ingest API, imap role) are bumped
    /// and woken here first, then written to JetStream marked as woken, and the dispatcher only
    /// acknowledges them. One hop less per wake; false: every change waits for a dispatcher.
    #[arg(long, env = "WAKE_AT_INGEST", default_value_t = true, action = clap::ArgAction::Set)]
    pub wake_at_ingest: bool,
    /// Send wakes straight to the frontends that announce a wake port (their WAKE_LISTEN_ADDR)
    /// instead of through the NATS server: one hop fewer. A wake a frontend does not
    /// acknowledge in time goes over NATS after all; false: NATS only.
    #[arg(long, env = "DIRECT_WAKES", default_value_t = true, action = clap::ArgAction::Set)]
    pub direct_wakes: bool,
    /// Most changes dispatched together.
    #[arg(long, env = "DISPATCH_BATCH", default_value_t = 512)]
    pub dispatch_batch: usize,
    /// Seconds before JetStream redelivers a change a watcher took but did not finish.
    #[arg(long, env = "ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Largest wake message in bytes (0: the NATS server's max_payload); a mailbox's wake to a
    /// pod is split into as many as it takes.
    #[arg(long, env = "WAKE_MAX_BYTES", default_value_t = 0)]
    pub wake_max_bytes: usize,
    /// Deliveries of a change before it goes to the dead-letter stream (`<ns>_dead`); failed
    /// ones are retried after 1, 2, 4 ... 60 s.
    #[arg(long, env = "CHANGES_MAX_DELIVER", default_value_t = 30)]
    pub changes_max_deliver: i64,
    /// Hours the stream keeps a change (acknowledged or not).
    #[arg(long, env = "CHANGES_MAX_AGE_HOURS", default_value_t = 24)]
    pub changes_max_age_hours: u64,
    /// Copies of the change streams in a NATS cluster (1, 3 or 5): with 3, a node may be lost.
    #[arg(long, env = "CHANGES_REPLICAS", default_value_t = 1)]
    pub changes_replicas: usize,
    /// `file` or `memory`.
    #[arg(long, env = "CHANGES_STORAGE", default_value = "file")]
    pub changes_storage: String,
    /// Must match the frontends': how long folder versions live without activity.
    #[arg(long, env = "DEVICE_STATE_TTL_DAYS", default_value_t = 30)]
    pub device_state_ttl_days: u32,
    /// Most changes in one ingest request.
    #[arg(long, env = "MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// The mail store's hierarchy separator, for changes addressed by `store_folder`.
    #[arg(long, env = "STORE_FOLDER_SEPARATOR", default_value = "/")]
    pub store_folder_separator: String,
    /// A prefix the store puts before every folder but INBOX (`INBOX.` in Courier-style layouts).
    #[arg(long, env = "STORE_FOLDER_PREFIX", default_value = "")]
    pub store_folder_prefix: String,
    /// The store's Drafts folder names (comma-separated): EAS type 3.
    #[arg(long, env = "STORE_DRAFTS", default_value = "Drafts")]
    pub store_drafts: String,
    /// The store's Trash folder names: EAS type 4 (Deleted Items).
    #[arg(long, env = "STORE_TRASH", default_value = "Trash")]
    pub store_trash: String,
    /// The store's Sent folder names: EAS type 5 (Sent Items).
    #[arg(long, env = "STORE_SENT", default_value = "Sent")]
    pub store_sent: String,
    #[command(flatten)]
    pub imap: crate::imap::ImapArgs,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The settings every service shares (stores, namespace, pod, logs, runtime).
    pub common: dp_runtime::Common,
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ingest_token: Option<String>,
    pub ingest: bool,
    pub dispatch: bool,
    pub wake_on: HashSet<ChangeKind>,
    pub coalesce: Duration,
    /// WAKE_AT_INGEST, with the dispatch role (whose Redis it uses).
    pub wake_at_ingest: bool,
    /// DIRECT_WAKES.
    pub direct_wakes: bool,
    pub dispatch_batch: usize,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub wake_max_bytes: usize,
    pub changes_max_age: Duration,
    pub changes_replicas: usize,
    pub memory_storage: bool,
    pub device_state_ttl: Duration,
    pub max_batch: usize,
    pub store_names: StoreNames,
    /// The `imap` role's settings, when it is on.
    pub imap: Option<crate::imap::Settings>,
}

impl WatcherArgs {
    pub fn check(self) -> Result<Config, ConfigError> {
        let store_names = self.store_names()?;
        let common = self.common.check()?;
        let (ingest, dispatch, imap) = roles(&self.roles)?;
        let imap = match imap {
            true => Some(self.imap.check()?),
            false => None,
        };
        if ingest && self.ingest_token.as_ref().is_none_or(|t| t.len() < 16) {
            return Err(ConfigError::new(
                "INGEST_TOKEN",
                "required with the ingest role, at least 16 characters",
            ));
        }
        let memory_storage = match self.changes_storage.as_str() {
            "file" => false,
            "memory" => true,
            other => {
                return Err(ConfigError::new(
                    "CHANGES_STORAGE",
                    format!("{other:?} is neither file nor memory"),
                ))
            }
        };
        if self.dispatch_batch == 0
            || self.max_batch == 0
            || self.ack_wait_secs == 0
            || self.changes_max_deliver < 1
        {
            return Err(ConfigError::new(
                "DISPATCH_BATCH/MAX_BATCH/ACK_WAIT_SECS/CHANGES_MAX_DELIVER",
                "must be more than 0",
            ));
        }
        if ![1, 3, 5].contains(&self.changes_replicas) {
            return Err(ConfigError::new(
                "CHANGES_REPLICAS",
                "must be 1, 3 or 5 (JetStream's replicas; a majority must stay up)",
            ));
        }
        Ok(Config {
            common,
            listen_addr: parse_addr("LISTEN_ADDR", &self.listen_addr)?,
            admin_addr: parse_addr("ADMIN_ADDR", &self.admin_addr)?,
            ingest,
            dispatch,
            wake_on: wake_on(&self.wake_on)?,
            store_names,
            imap,
            ingest_token: self.ingest_token,
            coalesce: Duration::from_millis(self.coalesce_ms),
            wake_at_ingest: self.wake_at_ingest && dispatch,
            direct_wakes: self.direct_wakes,
            dispatch_batch: self.dispatch_batch,
            ack_wait: Duration::from_secs(self.ack_wait_secs),
            max_deliver: self.changes_max_deliver,
            wake_max_bytes: self.wake_max_bytes,
            changes_max_age: Duration::from_secs(self.changes_max_age_hours * 3600),
            changes_replicas: self.changes_replicas,
            memory_storage,
            device_state_ttl: Duration::from_secs(u64::from(self.device_state_ttl_days) * 86_400),
            max_batch: self.max_batch,
        })
    }

    fn store_names(&self) -> Result<StoreNames, ConfigError> {
        if self.store_folder_separator.chars().count() != 1 {
            return Err(ConfigError::new(
                "STORE_FOLDER_SEPARATOR",
                "must be one character, such as / or .",
            ));
        }
        let list = |value: &str| -> Vec<String> {
            value
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(StoreNames {
            separator: self.store_folder_separator.clone(),
            prefix: self.store_folder_prefix.clone(),
            special: [
                list(&self.store_drafts),
                list(&self.store_trash),
                list(&self.store_sent),
            ],
        })
    }
}

/// `WATCHER_ROLES`: (ingest, dispatch, imap).
fn roles(value: &str) -> Result<(bool, bool, bool), ConfigError> {
    let (mut ingest, mut dispatch, mut imap) = (false, false, false);
    for role in value.split(',').map(str::trim) {
        match role {
            "ingest" => ingest = true,
            "dispatch" => dispatch = true,
            "imap" => imap = true,
            other => {
                return Err(ConfigError::new(
                    "WATCHER_ROLES",
                    format!("{other:?} is not ingest, dispatch or imap"),
                ))
            }
        }
    }
    Ok((ingest, dispatch, imap))
}

fn wake_on(value: &str) -> Result<HashSet<ChangeKind>, ConfigError> {
    let mut kinds = HashSet::new();
    for kind in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let parsed: ChangeKind = serde_json::from_value(serde_json::Value::String(kind.into()))
            .map_err(|_| {
                ConfigError::new(
                    "WAKE_ON",
                    format!("{kind:?} is not added, modified or removed"),
                )
            })?;
        kinds.insert(parsed);
    }
    Ok(kinds)
}
