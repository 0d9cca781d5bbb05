//! The `imap` role: for stores with no push hook, watch over IMAP the mailboxes that have
//! parked Pings (frontends list them in Redis while this role runs). Replicas of the role
//! share the mailboxes by rendezvous hashing over the replicas alive in Redis: each mailbox is
//! watched by exactly one, and another takes it over within a few seconds of its death.

mod client;
mod parse;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dp_runtime::redis::Redis;
use dp_runtime::shutdown::Drain;
use dp_runtime::ConfigError;
use sha2::{Digest, Sha256};

use crate::Shared;

#[derive(clap::Args, Clone, Debug)]
pub struct ImapArgs {
    /// The IMAP server: `imap://host:143` or `imaps://host:993` (role `imap`).
    #[arg(long, env = "IMAP_URL")]
    pub imap_url: Option<String>,
    /// PEM certificates to trust for `imaps://` instead of the system's.
    #[arg(long, env = "IMAP_CA")]
    pub imap_ca: Option<PathBuf>,
    /// The master user that may log in as any mailbox.
    #[arg(long, env = "IMAP_MASTER_USER")]
    pub imap_master_user: Option<String>,
    #[arg(long, env = "IMAP_MASTER_PASSWORD", hide_env_values = true)]
    pub imap_master_password: Option<String>,
    /// Log in as `<mailbox><separator><master>` (Dovecot's `*`) instead of SASL PLAIN with an
    /// authorization identity.
    #[arg(long, env = "IMAP_MASTER_SEPARATOR")]
    pub imap_master_separator: Option<String>,
    /// Most mailboxes (connections) one replica watches.
    #[arg(long, env = "IMAP_MAX_CONNECTIONS", default_value_t = 5000)]
    pub imap_max_connections: usize,
    /// A mailbox is watched until this long after its last parked Ping ended.
    #[arg(long, env = "IMAP_DROP_AFTER_SECS", default_value_t = 900)]
    pub imap_drop_after_secs: u64,
    /// Without NOTIFY: how often the folders other than INBOX are looked at.
    #[arg(long, env = "IMAP_POLL_SECS", default_value_t = 60)]
    pub imap_poll_secs: u64,
    /// Use NOTIFY where the server offers it (false: IDLE and polling, for servers whose
    /// NOTIFY misbehaves).
    #[arg(long, env = "IMAP_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub imap_notify: bool,
    /// How often a replica looks for mailboxes to take or give up.
    #[arg(long, env = "IMAP_ASSIGN_SECS", default_value_t = 5)]
    pub imap_assign_secs: u64,
}

/// How the role reaches the server.
#[derive(Clone)]
pub struct Server {
    /// `host:port`.
    pub address: String,
    pub host: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub master_user: String,
    pub master_password: String,
    pub master_separator: Option<String>,
}

impl std::fmt::Debug for Server {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("master_user", &self.master_user)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub server: Server,
    pub max_connections: usize,
    pub drop_after: Duration,
    pub poll: Duration,
    pub assign: Duration,
    pub notify: bool,
    /// Connect, log in and command timeout.
    pub timeout: Duration,
    /// NOTIFY: how long a silent connection waits before a NOOP.
    pub keepalive: Duration,
}

impl ImapArgs {
    pub fn check(&self) -> Result<Settings, ConfigError> {
        let url = self
            .imap_url
            .as_deref()
            .ok_or_else(|| ConfigError::new("IMAP_URL", "required with the imap role"))?;
        let (tls, rest) = if let Some(rest) = url.strip_prefix("imaps://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("imap://") {
            (false, rest)
        } else {
            return Err(ConfigError::new(
                "IMAP_URL",
                "must start imap:// or imaps://",
            ));
        };
        let address = rest.trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => (host, port.to_owned()),
            _ => (address, if tls { "993".into() } else { "143".into() }),
        };
        if host.is_empty() {
            return Err(ConfigError::new("IMAP_URL", "names no host"));
        }
        let master_user = self
            .imap_master_user
            .clone()
            .ok_or_else(|| ConfigError::new("IMAP_MASTER_USER", "required with the imap role"))?;
        let master_password = self.imap_master_password.clone().ok_or_else(|| {
            ConfigError::new("IMAP_MASTER_PASSWORD", "required with the imap role")
        })?;
        let tls = match tls {
            true => Some(
                client::tls_config(self.imap_ca.as_deref())
                    .map_err(|e| ConfigError::new("IMAP_CA", format!("{e:#}")))?,
            ),
            false => None,
        };
        if self.imap_max_connections == 0 || self.imap_assign_secs == 0 || self.imap_poll_secs == 0
        {
            return Err(ConfigError::new(
                "IMAP_MAX_CONNECTIONS/IMAP_ASSIGN_SECS/IMAP_POLL_SECS",
                "must be more than 0",
            ));
        }
        Ok(Settings {
            server: Server {
                address: format!("{host}:{port}"),
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                tls,
                master_user,
                master_password,
                master_separator: self.imap_master_separator.clone().filter(|s| !s.is_empty()),
            },
            max_connections: self.imap_max_connections,
            drop_after: Duration::from_secs(self.imap_drop_after_secs),
            poll: Duration::from_secs(self.imap_poll_secs),
            assign: Duration::from_secs(self.imap_assign_secs),
            notify: self.imap_notify,
            timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(240),
        })
    }
}

/// What every watch shares.
pub struct Context {
    shared: Arc<Shared>,
    server: Server,
    settings: Settings,
    redis: Redis,
}

type Watches = HashMap<
    String,
    (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ),
>;

/// Runs the role until `drain` fires: every assign interval, announce this replica, read the
/// pinged mailboxes and the live replicas, and start or stop watches to match.
pub async fn run(
    shared: Arc<Shared>,
    settings: Settings,
    redis: Redis,
    ready: Arc<AtomicBool>,
    mut drain: Drain,
) {
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        server: settings.server.clone(),
        settings,
        redis,
    });
    let pod = shared.config.common.pod.clone();
    let mut watches = Watches::new();
    let mut interval = tokio::time::interval(ctx.settings.assign);
    loop {
        tokio::select! {
            _ = drain.signalled() => break,
            _ = interval.tick() => {}
        }
        match assign(&ctx, &pod, &mut watches).await {
            Ok(()) => ready.store(true, Ordering::Release),
            Err(err) => {
                ready.store(false, Ordering::Release);
                tracing::warn!(error = %err, "IMAP role cannot reach Redis; keeping its watches");
            }
        }
    }
    let mut redis = ctx.redis.clone();
    let _ = shared.store.imap_leave(&mut redis, &pod).await;
    for (_, (stop, task)) in watches.drain() {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

async fn assign(ctx: &Arc<Context>, pod: &str, watches: &mut Watches) -> redis::RedisResult<()> {
    let now = dp_runtime::now_ms();
    let mut redis = ctx.redis.clone();
    let store = &ctx.shared.store;
    let life = 3 * ctx.settings.assign.as_millis() as u64;
    let replicas = store
        .imap_heartbeat(&mut redis, pod, now + life, now)
        .await?;
    let drop_after = ctx.settings.drop_after.as_millis() as u64;
    let since = now.saturating_sub(drop_after);
    let pinged = store
        .pinged_since(&mut redis, since, since.saturating_sub(86_400_000))
        .await?;
    let mine: std::collections::HashSet<String> = pinged
        .into_iter()
        .filter(|mailbox| owner(mailbox, &replicas) == Some(pod))
        .collect();
    watches.retain(|mailbox, (stop, _)| {
        let keep = mine.contains(mailbox);
        if !keep {
            let _ = stop.send(true);
        }
        keep
    });
    let mut waiting = 0;
    for mailbox in mine {
        if watches.contains_key(&mailbox) {
            continue;
        }
        if watches.len() >= ctx.settings.max_connections {
            waiting += 1;
            continue;
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(watch::run(ctx.clone(), mailbox.clone(), stopped));
        watches.insert(mailbox, (stop, task));
    }
    let metrics = &ctx.shared.metrics.imap;
    metrics.watched.set(watches.len() as i64);
    metrics.over_capacity.set(waiting);
    if waiting > 0 {
        tracing::warn!(
            waiting,
            max = ctx.settings.max_connections,
            "IMAP_MAX_CONNECTIONS reached: mailboxes left unwatched on this replica"
        );
    }
    Ok(())
}

/// The replica that watches `mailbox`: the highest hash of the pair (rendezvous hashing), so a
/// replica's death moves only its own mailboxes.
fn owner<'a>(mailbox: &str, replicas: &'a [String]) -> Option<&'a str> {
    replicas
        .iter()
        .max_by_key(|replica| {
            let digest = Sha256::new()
                .chain_update(mailbox.as_bytes())
                .chain_update([0])
                .chain_update(replica.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(first)
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_leaving_moves_only_its_own_mailboxes() {
        let three: Vec<String> = ["w-0", "w-1", "w-2"].map(String::from).to_vec();
        let two: Vec<String> = ["w-0", "w-2"].map(String::from).to_vec();
        let mut moved = 0;
        let mut per = HashMap::new();
        for i in 0..3000 {
            let mailbox = format!("user{i}@example.com");
            let before = owner(&mailbox, &three).expect("an owner");
            let after = owner(&mailbox, &two).expect("an owner");
            *per.entry(before).or_insert(0) += 1;
            if before != "w-1" {
                assert_eq!(before, after, "{mailbox} stayed");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, per["w-1"]);
        assert!(per.values().all(|&n| n > 800), "spread evenly: {per:?}");
        assert_eq!(owner("a", &[]), None);
    }
}
