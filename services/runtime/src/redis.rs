//! Redis as every service reaches it: one server (`REDIS_MODE=single`) or a Redis Cluster
//! (`REDIS_MODE=cluster`, `REDIS_URL` a comma-separated list of seed nodes). Either way the
//! services hold one [`Redis`], a cheap clone over a multiplexed connection that reconnects by
//! itself; in a cluster each script goes to the primary of its mailbox's slot (every key of a
//! mailbox shares one hash tag) and MOVED, ASK and failovers are followed.
//!
//! Replication is asynchronous: a primary that dies before its replica copied a write loses it.
//! The scripts I1 rests on (a bump before its change is acknowledged to JetStream, the claim that
//! registers a parked Ping, the rollback of an answer never delivered) therefore run through
//! [`invoke_durable`]: the script and a `WAIT` for `REDIS_WAIT_REPLICAS` replicas go to the
//! script's node in one pipeline, and a script not confirmed in time is treated as failed, so
//! its change is delivered again or its Ping retried. A single command outside a mailbox's keys
//! that a wake rests on (the IMAP watcher's index of pinged mailboxes) goes the same way through
//! [`write_durable`]. One pipeline, not a `WAIT` after the
//! script: the cluster client retries a command whose node died on whichever node it finds, and
//! a `WAIT` there confirms nothing (seen in the failover test). A pipeline retried elsewhere
//! runs the script there too (a bump twice is a duplicate at worst), or fails with MOVED.
//!
//! A primary with fewer replicas connected than asked (one failed over, or lost its replica) is
//! waited for by as many as it has: with none there is nothing a failover could promote, so
//! nothing a write could be lost to, and refusing writes would stop that shard's wakes until
//! the lost node is back. `ROLE` tells how many a primary has, asked at most once a second per
//! slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{get_slot, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    ScriptInvocation, Value,
};

use crate::ConfigError;

/// How the services reach Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One server (or a managed endpoint that looks like one).
    Single,
    /// A Redis Cluster, reached through any of its seed nodes.
    Cluster,
}

/// `REDIS_MODE`, `REDIS_URL` and the replication wait, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisServers {
    pub mode: Mode,
    /// The URLs as written: they hold the password, so never logged.
    urls: Vec<String>,
    /// Replicas that must hold a write I1 rests on before it counts; 0: none asked.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

impl std::fmt::Debug for RedisServers {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServers")
            .field("mode", &self.mode)
            .field("servers", &self.addresses())
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

impl RedisServers {
    /// `wait_replicas` unset: 1 in cluster mode (each primary has a replica to fail over to),
    /// 0 for a single server.
    pub fn parse(
        mode: &str,
        urls: &str,
        wait_replicas: Option<u32>,
        wait_timeout_ms: u64,
    ) -> Result<RedisServers, ConfigError> {
        let mode = match mode {
            "single" => Mode::Single,
            "cluster" => Mode::Cluster,
            other => {
                return Err(ConfigError::new(
                    "REDIS_MODE",
                    format!("{other:?}: single or cluster"),
                ))
            }
        };
        let invalid = |reason: String| ConfigError::new("REDIS_URL", reason);
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        match (mode, urls.len()) {
            (_, 0) => return Err(invalid("no server given".into())),
            (Mode::Single, 1) | (Mode::Cluster, _) => {}
            (Mode::Single, _) => {
                return Err(invalid(
                    "several servers are a Redis Cluster's seed nodes: set REDIS_MODE=cluster"
                        .into(),
                ))
            }
        }
        let mut credentials = None;
        for (n, url) in urls.iter().enumerate() {
            // The parser's message may quote the URL, password and all: not repeated.
            let info = url.as_str().into_connection_info().map_err(|_| {
                invalid(format!(
                    "server {} is not redis://[user:password@]host:port[/db] or rediss://",
                    n + 1
                ))
            })?;
            if mode == Mode::Cluster && info.redis.db != 0 {
                return Err(invalid("a Redis Cluster has only database 0".into()));
            }
            let these = (info.redis.username, info.redis.password);
            if credentials.as_ref().is_some_and(|c| c != &these) {
                return Err(invalid("the seed nodes name different credentials".into()));
            }
            credentials = Some(these);
        }
        if wait_timeout_ms == 0 {
            return Err(ConfigError::new(
                "REDIS_WAIT_TIMEOUT_MS",
                "0 would wait for ever: at least 1",
            ));
        }
        let wait_replicas = wait_replicas.unwrap_or(match mode {
            Mode::Single => 0,
            Mode::Cluster => 1,
        });
        Ok(RedisServers {
            mode,
            urls,
            wait_replicas,
            wait_timeout: Duration::from_millis(wait_timeout_ms),
        })
    }

    /// The servers as `host:port`, safe to log.
    pub fn addresses(&self) -> Vec<String> {
        self.urls
            .iter()
            .filter_map(|u| u.as_str().into_connection_info().ok())
            .map(|info| info.addr.to_string())
            .collect()
    }

    /// The URLs with their credentials, for a tool that hands them on (a child process).
    pub fn urls(&self) -> String {
        self.urls.join(",")
    }

    /// Connects, retrying every half second until Redis answers or `give_up` says stop: a
    /// service waits for Redis rather than exiting, and reports not ready meanwhile.
    pub async fn connect(&self, give_up: impl Fn() -> bool) -> redis::RedisResult<Redis> {
        let mut attempt = 0u32;
        loop {
            match self.connect_once().await {
                Ok(conn) => {
                    return Ok(Redis {
                        conn,
                        wait_replicas: self.wait_replicas,
                        wait_timeout: self.wait_timeout,
                        replicas: Arc::default(),
                    })
                }
                Err(err) if give_up() => return Err(err),
                Err(err) => {
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(error = %err, servers = ?self.addresses(), "waiting for Redis");
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn connect_once(&self) -> redis::RedisResult<Conn> {
        match self.mode {
            Mode::Single => {
                let client = redis::Client::open(self.urls[0].as_str())?;
                // redis 0.27 hands `factor` to backon as the growth of a 1 s delay: its default
                // (100) retried a lost connection after 1 s, then 60 s, so an outage of two
                // seconds cost a minute without Redis. Every second, six times; then the next
                // command starts another round.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_factor(1)
                    .set_max_delay(1000)
                    .set_number_of_retries(6)
                    .set_connection_timeout(Duration::from_secs(1));
                let manager = ConnectionManager::new_with_config(client, config).await?;
                Ok(Conn::Single(manager))
            }
            Mode::Cluster => {
                let client = redis::cluster::ClusterClient::builder(self.urls.clone())
                    .connection_timeout(Duration::from_secs(1))
                    // Above the WAIT's own timeout, so a slow replica is reported as such.
                    .response_timeout(self.wait_timeout + Duration::from_secs(2))
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// A connection to Redis in either mode; clones share it.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    wait_replicas: u32,
    wait_timeout: Duration,
    replicas: Arc<Replicas>,
}

/// How many replicas each slot's primary had connected, and when that was asked.
#[derive(Default)]
struct Replicas {
    by_slot: Mutex<HashMap<u16, (Instant, u32)>>,
    /// When a primary short of replicas was last logged: once in a while, not once per slot.
    warned: Mutex<Option<Instant>>,
}

/// How often a primary short of replicas is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long a primary's replica count is trusted.
const REPLICAS_FRESH: Duration = Duration::from_secs(1);

// Cloned for every request: a boxed manager would allocate each time, the copy does not.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection that can wait for replicas after a script (see [`invoke_durable`]).
pub trait Durable: ConnectionLike + Send {
    /// How many replicas a script's writes on `key`'s primary must reach, and within how long;
    /// `None`: none.
    fn replicas_for(
        &mut self,
        key: &str,
    ) -> impl std::future::Future<Output = redis::RedisResult<Option<(u32, Duration)>>> + Send;
}

/// Runs a script whose writes a wake rests on; with replicas to wait for, the script and a
/// `WAIT` go to its node in one pipeline, and fewer replicas than needed within the timeout is
/// an error ([`ErrorKind::TryAgain`]). `key` is one of the script's keys.
pub async fn invoke_durable<T: FromRedisValue, C: Durable>(
    conn: &mut C,
    invocation: &ScriptInvocation<'_>,
    key: &str,
) -> redis::RedisResult<T> {
    let Some((needed, timeout)) = conn.replicas_for(key).await? else {
        return invocation.invoke_async(conn).await;
    };
    let mut pipe = redis::pipe();
    pipe.invoke_script(invocation);
    wait_after(&mut pipe, needed, timeout);
    let replies = match pipe.query_async(conn).await {
        Err(err) if err.kind() == ErrorKind::NoScriptError => {
            // This node has not seen the script yet: load it (on every node) and go again.
            invocation.load_async(conn).await?;
            pipe.query_async(conn).await?
        }
        other => other?,
    };
    confirmed(replies, needed, timeout)
}

/// Sends one command whose write something outside its mailbox's keys rests on (the index of
/// pinged mailboxes the IMAP watcher reads), the way [`invoke_durable`] runs a script: with
/// replicas to wait for, the command and a `WAIT` go to its node in one pipeline. `key` is the
/// key it writes.
pub async fn write_durable<T: FromRedisValue, C: Durable>(
    conn: &mut C,
    cmd: &Cmd,
    key: &str,
) -> redis::RedisResult<T> {
    let Some((needed, timeout)) = conn.replicas_for(key).await? else {
        return cmd.query_async(conn).await;
    };
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone());
    wait_after(&mut pipe, needed, timeout);
    confirmed(pipe.query_async(conn).await?, needed, timeout)
}

fn wait_after(pipe: &mut Pipeline, needed: u32, timeout: Duration) {
    pipe.cmd("WAIT").arg(needed).arg(timeout.as_millis() as u64);
}

/// The write's reply, once the `WAIT` after it counted enough replicas; else
/// [`ErrorKind::TryAgain`].
fn confirmed<T>((value, acked): (T, i64), needed: u32, timeout: Duration) -> redis::RedisResult<T> {
    if acked < i64::from(needed) {
        return Err(RedisError::from((
            ErrorKind::TryAgain,
            "write not confirmed by enough replicas",
            format!(
                "{acked} of {needed} replicas within {} ms",
                timeout.as_millis()
            ),
        )));
    }
    Ok(value)
}

impl Durable for Redis {
    async fn replicas_for(&mut self, key: &str) -> redis::RedisResult<Option<(u32, Duration)>> {
        if self.wait_replicas == 0 {
            return Ok(None);
        }
        let slot = match self.conn {
            Conn::Single(_) => 0,
            Conn::Cluster(_) => get_slot(key.as_bytes()),
        };
        let needed = self.wait_replicas.min(self.replicas_of(slot).await?);
        Ok((needed > 0).then_some((needed, self.wait_timeout)))
    }
}

/// Plain connections (tools, tests) wait for no replica.
impl Durable for redis::aio::MultiplexedConnection {
    async fn replicas_for(&mut self, _: &str) -> redis::RedisResult<Option<(u32, Duration)>> {
        Ok(None)
    }
}

impl Redis {
    /// The replicas connected to the primary of `slot`, as its `ROLE` lists them.
    async fn replicas_of(&mut self, slot: u16) -> redis::RedisResult<u32> {
        let now = Instant::now();
        if let Ok(known) = self.replicas.by_slot.lock() {
            if let Some((asked, count)) = known.get(&slot) {
                if now.duration_since(*asked) < REPLICAS_FRESH {
                    return Ok(*count);
                }
            }
        }
        let role = self.on_primary(slot, &redis::cmd("ROLE")).await?;
        // ["master", offset, [[host, port, offset], ...]]; anything else has no replicas.
        let count = match role {
            Value::Array(parts) => match parts.get(2) {
                Some(Value::Array(replicas)) => replicas.len() as u32,
                _ => 0,
            },
            _ => 0,
        };
        if let Ok(mut known) = self.replicas.by_slot.lock() {
            known.insert(slot, (now, count));
        }
        if count < self.wait_replicas {
            if let Ok(mut warned) = self.replicas.warned.lock() {
                if warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                    *warned = Some(now);
                    tracing::warn!(slot, replicas = count, wanted = self.wait_replicas, "a Redis primary has fewer replicas than REDIS_WAIT_REPLICAS: its writes wait for those it has");
                }
            }
        }
        Ok(count)
    }

    /// Runs `cmd` on the primary holding `slot` (the one server in single mode).
    async fn on_primary(&mut self, slot: u16, cmd: &Cmd) -> redis::RedisResult<Value> {
        match &mut self.conn {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let primary = Route::new(slot, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary));
                conn.route_command(cmd, routing).await
            }
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_server_takes_one_url_and_waits_for_no_replica() {
        let s = RedisServers::parse("single", "redis://:pw@h:6379", None, 1000).expect("accepted");
        assert_eq!((s.mode, s.wait_replicas), (Mode::Single, 0));
        assert_eq!(s.addresses(), vec!["h:6379"]);
        let err = RedisServers::parse("single", "redis://a:1,redis://b:2", None, 1000)
            .expect_err("refused");
        assert!(err.to_string().contains("REDIS_MODE=cluster"), "{err}");
    }

    #[test]
    fn a_cluster_takes_seed_nodes_and_waits_for_one_replica() {
        let s = RedisServers::parse("cluster", "redis://a:1, redis://b:2,,", None, 1000)
            .expect("accepted");
        assert_eq!((s.mode, s.wait_replicas), (Mode::Cluster, 1));
        assert_eq!(s.addresses(), vec!["a:1", "b:2"]);
        let s = RedisServers::parse("cluster", "redis://a:1", Some(0), 1000).expect("accepted");
        assert_eq!(s.wait_replicas, 0);
    }

    #[test]
    fn bad_settings_are_refused_without_the_password() {
        for (mode, urls, wait_ms, setting) in [
            ("sentinel", "redis://a:1", 1000, "REDIS_MODE"),
            ("single", "", 1000, "REDIS_URL"),
            ("single", "http://:secret@a:1", 1000, "REDIS_URL"),
            ("cluster", "redis://:secret@a:1/3", 1000, "REDIS_URL"),
            (
                "cluster",
                "redis://:secret@a:1,redis://:other@b:1",
                1000,
                "REDIS_URL",
            ),
            ("single", "redis://a:1", 0, "REDIS_WAIT_TIMEOUT_MS"),
        ] {
            let err = RedisServers::parse(mode, urls, None, wait_ms).expect_err("refused");
            assert_eq!(err.setting, setting, "{mode} {urls}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let s = RedisServers::parse("single", "redis://:secret@a:1", None, 1).expect("accepted");
        assert!(!format!("{s:?}").contains("secret"));
    }
}
