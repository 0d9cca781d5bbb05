//! Private Redis and NATS servers (the machine's `redis-server` and `nats-server`), behind
//! passwords, on free ports, that a test or the chaos load test restarts or kills: what must
//! not be done to the shared servers every other test uses.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

mod redis_cluster;
pub use redis_cluster::{HeldReplication, LocalRedisCluster};

/// A free local port, never one this process was given before: ports are bound and released
/// one after another, and the kernel may hand a released one out again, which gave two nodes
/// of one cluster the same port. (Another process could still take it first, rarely.)
fn free_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding a local port")?;
        let port = listener.local_addr()?.port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    bail!("100 local ports in a row were ones this process had been given before")
}

fn scratch(kind: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "dp-{kind}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Asks a process to stop as an operator's restart does (SIGTERM: Redis writes its
/// append-only file out, NATS closes its streams), and waits for it to exit.
async fn terminate(child: &mut Child, what: &str) -> Result<()> {
    if let Some(pid) = child.id() {
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} ({what}) failed");
        }
    }
    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(exited) => {
            exited.with_context(|| format!("waiting for {what} to exit"))?;
            Ok(())
        }
        Err(_) => {
            child.kill().await.ok();
            bail!("{what} did not stop within 20 s of SIGTERM")
        }
    }
}

/// Whether the nats-server monitoring on `port` answers `/healthz` with 200: JetStream is up
/// and every stream and consumer it holds a replica of is current.
async fn healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if tcp
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200")
}

/// Polls `ready` every 50 ms until it answers true, for at most 20 s.
async fn until_ready<F, Fut>(what: &str, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready().await {
        if Instant::now() > deadline {
            bail!("{what} did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A store's process, its port and its directory (removed on drop, with the process).
struct Server {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    name: &'static str,
}

impl Server {
    fn new(name: &'static str) -> Result<Server> {
        Ok(Server {
            port: free_port()?,
            dir: scratch(name)?,
            child: None,
            name,
        })
    }

    fn spawn(&mut self, command: &mut Command) -> Result<()> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (is it installed?)", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(mut child) => terminate(&mut child, self.name).await,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct LocalRedis {
    pub port: u16,
    password: String,
    persistence: bool,
    server: Server,
}

impl LocalRedis {
    /// With `persistence`, as compose and the chart run it (append-only file, fsync every
    /// second); without, as a cache would (a restart forgets everything).
    pub async fn start(password: &str, persistence: bool) -> Result<LocalRedis> {
        let server = Server::new("redis-server")?;
        let mut redis = LocalRedis {
            port: server.port,
            password: password.to_owned(),
            persistence,
            server,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}", self.password, self.port)
    }

    async fn spawn(&mut self) -> Result<()> {
        let aof = if self.persistence { "yes" } else { "no" };
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--requirepass", &self.password, "--save", ""])
            .args(["--appendonly", aof, "--appendfsync", "everysec"])
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.server.dir);
        self.server.spawn(&mut command)?;
        let url = self.url();
        until_ready("redis-server", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(mut conn) => redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.server.stop().await?;
        self.spawn().await
    }
}

pub struct LocalNats {
    pub port: u16,
    user: String,
    password: String,
    server: Server,
}

impl LocalNats {
    /// With JetStream on file storage in its own directory, which a restart keeps.
    pub async fn start(user: &str, password: &str) -> Result<LocalNats> {
        let server = Server::new("nats-server")?;
        let mut nats = LocalNats {
            port: server.port,
            user: user.to_owned(),
            password: password.to_owned(),
            server,
        };
        nats.spawn().await?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!(
            "nats://{}:{}@127.0.0.1:{}",
            self.user, self.password, self.port
        )
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--user", &self.user, "--pass", &self.password, "-js", "-sd"])
            .arg(&self.server.dir);
        self.server.spawn(&mut command)?;
        let options = || {
            async_nats::ConnectOptions::with_user_and_password(
                self.user.clone(),
                self.password.clone(),
            )
        };
        let addr = format!("127.0.0.1:{}", self.port);
        until_ready("nats-server", || {
            let (options, addr) = (options(), addr.clone());
            async move {
                match options.connect(addr).await {
                    Ok(client) => client.flush().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
    }

    /// Stops the server (SIGTERM) and starts it again on the same port and directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.server.stop().await?;
        self.spawn().await
    }
}

/// Three `nats-server`s in one cluster with JetStream (routes between them on their own free
/// ports), for streams with three replicas; a node can be killed and started again.
pub struct LocalNatsCluster {
    nodes: Vec<Server>,
    cluster_ports: Vec<u16>,
    monitor_ports: Vec<u16>,
}

impl LocalNatsCluster {
    pub async fn start() -> Result<LocalNatsCluster> {
        let mut cluster = LocalNatsCluster {
            nodes: Vec::new(),
            cluster_ports: Vec::new(),
            monitor_ports: Vec::new(),
        };
        for _ in 0..3 {
            cluster.nodes.push(Server::new("nats-server")?);
            cluster.cluster_ports.push(free_port()?);
            cluster.monitor_ports.push(free_port()?);
        }
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        cluster.until_jetstream_has_a_leader().await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated, as `NATS_URL` takes a cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let routes = self
            .cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &self.nodes[i].port.to_string()])
            .args(["--server_name", &format!("n{i}"), "-js", "-sd"])
            .arg(&self.nodes[i].dir)
            .args(["--cluster_name", "dp", "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", self.cluster_ports[i]))
            .args(["--routes", &routes])
            .args(["-m", &self.monitor_ports[i].to_string()]);
        self.nodes[i].spawn(&mut command)
    }

    /// Kills node `i` at once (SIGKILL), as a lost machine.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts node `i` again, on its port and with its data; returns once its streams and
    /// consumers have caught up (its `/healthz`), as a rolling restart waits before taking the
    /// next node down: a node lost while the restarted one still catches up leaves a replicated
    /// stream without a quorum.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.until_jetstream_has_a_leader().await?;
        let port = self.monitor_ports[i];
        until_ready("the restarted NATS node's /healthz", || healthy(port)).await
    }

    /// JetStream in a cluster answers only once its nodes elected a leader: until a replicated
    /// stream can be made.
    async fn until_jetstream_has_a_leader(&self) -> Result<()> {
        let url = self.url();
        until_ready("a JetStream cluster", || {
            let url = url.clone();
            async move {
                let Ok(servers) = dp_runtime::nats::NatsServers::parse(&url) else {
                    return false;
                };
                let Ok(client) = async_nats::connect(servers.addresses()).await else {
                    return false;
                };
                let js = async_nats::jetstream::new(client);
                let probe = async_nats::jetstream::stream::Config {
                    name: "readiness_probe".into(),
                    subjects: vec!["readiness.probe".into()],
                    num_replicas: 3,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                };
                match js.get_or_create_stream(probe).await {
                    Ok(_) => js.delete_stream("readiness_probe").await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
    }
}
