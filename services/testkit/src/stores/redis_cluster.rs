//! A Redis Cluster of six `redis-server`s (three primaries, each with a replica) behind a
//! password, as managed Redis in cluster mode offers it: a node can be killed (its replica is
//! promoted within about two seconds, `cluster-node-timeout` 1 s) and started again (it rejoins
//! as a replica, with its append-only file).

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use redis::Value;
use tokio::process::Command;

use super::{free_port, until_ready, Server};

/// Nodes: three primaries and three replicas.
const NODES: usize = 6;

pub struct LocalRedisCluster {
    password: String,
    nodes: Vec<Server>,
    bus_ports: Vec<u16>,
}

impl LocalRedisCluster {
    pub async fn start(password: &str) -> Result<LocalRedisCluster> {
        let mut cluster = LocalRedisCluster {
            password: password.to_owned(),
            nodes: Vec::new(),
            bus_ports: Vec::new(),
        };
        for _ in 0..NODES {
            cluster.nodes.push(Server::new("redis-server")?);
            cluster.bus_ports.push(free_port()?);
        }
        for i in 0..NODES {
            cluster.spawn(i).await?;
        }
        let status = Command::new("redis-cli")
            .args(["--no-auth-warning", "-a", password, "--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .context("running redis-cli --cluster create")?;
        if !status.success() {
            bail!("redis-cli --cluster create failed");
        }
        cluster.until_healthy().await?;
        Ok(cluster)
    }

    /// Every node, comma-separated, as `REDIS_URL` takes a cluster's seed nodes.
    pub fn url(&self) -> String {
        (0..NODES)
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node_url(&self, i: usize) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}",
            self.password, self.nodes[i].port
        )
    }

    async fn spawn(&mut self, i: usize) -> Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.nodes[i].port.to_string(),
            ])
            .args(["--cluster-enabled", "yes", "--cluster-port"])
            .arg(self.bus_ports[i].to_string())
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args([
                "--requirepass",
                &self.password,
                "--masterauth",
                &self.password,
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.nodes[i].dir);
        self.nodes[i].spawn(&mut command)?;
        let url = self.node_url(i);
        until_ready("a redis-server of the cluster", || {
            let url = url.clone();
            async move { command_on(&url, redis::cmd("PING")).await.is_ok() }
        })
        .await
    }

    /// The node that serves `key`'s slot as primary now.
    pub async fn primary_of(&self, key: &str) -> Result<usize> {
        for i in 0..NODES {
            if self.nodes[i].child.is_none() {
                continue;
            }
            // Only the slot's primary answers a read; the others redirect (MOVED).
            let mut exists = redis::cmd("EXISTS");
            exists.arg(key);
            if command_on(&self.node_url(i), exists).await.is_ok() {
                return Ok(i);
            }
        }
        bail!("no live node serves {key}")
    }

    /// Holds back what primary `i` sends its replica (an iptables rule dropping the replication
    /// stream, root), until the guard is dropped: its writes from now on are on it alone, as
    /// when a primary dies before its replica copied them.
    pub async fn hold_replication(&self, i: usize) -> Result<HeldReplication> {
        let mut list = redis::cmd("CLIENT");
        list.arg("LIST").arg("TYPE").arg("replica");
        let Value::BulkString(clients) = command_on(&self.node_url(i), list).await? else {
            bail!("CLIENT LIST answered something else");
        };
        let clients = String::from_utf8_lossy(&clients).into_owned();
        let replica_port = clients
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .and_then(|addr| addr.rsplit_once(':'))
            .map(|(_, port)| port.to_owned())
            .context("node has no replica connected")?;
        let rule: Vec<String> = [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--sport",
            &self.nodes[i].port.to_string(),
            "--dport",
            &replica_port,
            "-j",
            "DROP",
        ]
        .map(str::to_owned)
        .to_vec();
        let status = Command::new("iptables")
            .arg("-I")
            .args(&rule)
            .status()
            .await
            .context("running iptables (scripts/setup.sh installs it; the tests run as root)")?;
        if !status.success() {
            bail!("iptables refused the rule");
        }
        Ok(HeldReplication(rule))
    }

    /// `key`'s hash field as node `i` alone holds it (no redirection).
    pub async fn hget_on(&self, i: usize, key: &str, field: &str) -> Result<Option<String>> {
        let mut hget = redis::cmd("HGET");
        hget.arg(key).arg(field);
        let value = command_on(&self.node_url(i), hget).await?;
        Ok(redis::from_redis_value(&value)?)
    }

    /// `member`'s score in sorted set `key` as node `i` alone holds it (no redirection).
    pub async fn zscore_on(&self, i: usize, key: &str, member: &str) -> Result<Option<f64>> {
        let mut zscore = redis::cmd("ZSCORE");
        zscore.arg(key).arg(member);
        let value = command_on(&self.node_url(i), zscore).await?;
        Ok(redis::from_redis_value(&value)?)
    }

    /// Kills node `i` at once (SIGKILL), as a lost machine.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts node `i` again, on its ports and with its data; waits until the cluster is whole.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i).await?;
        self.until_healthy().await
    }

    /// Every slot served, and every live node either a primary or a replica in sync with one.
    pub async fn until_healthy(&self) -> Result<()> {
        let live: Vec<String> = (0..NODES)
            .filter(|i| self.nodes[*i].child.is_some())
            .map(|i| self.node_url(i))
            .collect();
        until_ready("the Redis Cluster to be whole", || {
            let live = live.clone();
            async move {
                for url in &live {
                    let Ok(Value::BulkString(info)) =
                        command_on(url, redis::cmd("CLUSTER").arg("INFO").clone()).await
                    else {
                        return false;
                    };
                    if !String::from_utf8_lossy(&info).contains("cluster_state:ok") {
                        return false;
                    }
                    let Ok(Value::Array(role)) = command_on(url, redis::cmd("ROLE")).await else {
                        return false;
                    };
                    let is = |n: usize, what: &str| {
                        matches!(role.get(n), Some(Value::BulkString(b)) if b == what.as_bytes())
                    };
                    if is(0, "slave") && !is(3, "connected") {
                        return false;
                    }
                }
                true
            }
        })
        .await
    }
}

async fn command_on(url: &str, cmd: redis::Cmd) -> redis::RedisResult<Value> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}

/// An iptables rule holding back a replication stream, removed on drop.
pub struct HeldReplication(Vec<String>);

impl Drop for HeldReplication {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .arg("-D")
            .args(&self.0)
            .status();
    }
}
