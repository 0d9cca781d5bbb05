//! The system under load: a local cluster started as processes for the run, or the addresses
//! of a running deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use dp_testkit::namespace::{Cleared, Namespace};

use crate::balancer::Balancer;
use crate::plan::Auth;
use crate::probe;

#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Proxy mode: the local frontends forward every command but Ping here (UPSTREAM_URL), and
    /// the devices enrol (FolderSync, Sync) and acknowledge each Status 2 with a Sync.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Start this many frontends as local processes for the run (0: use --frontend).
    #[arg(long, default_value_t = 0)]
    pub local_frontends: usize,
    /// Watchers started with a local cluster.
    #[arg(long, default_value_t = 1)]
    pub local_watchers: usize,
    /// Where the ping-frontend and mailbox-watcher binaries are (default: beside loadtest).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The local watchers' COALESCE_MS (the service's default is 2; 0 batches only what is
    /// already there, which trades a wake per burst for about a millisecond).
    #[arg(long, default_value_t = 2)]
    pub coalesce_ms: u64,
    /// The local watchers' WAKE_AT_INGEST (the service's default is true; false: every change
    /// is woken by a dispatcher, one hop later).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub wake_at_ingest: bool,
    /// Direct wake links: the local frontends take wakes on a port of their own
    /// (WAKE_LISTEN_ADDR) and the watchers send them there (DIRECT_WAKES); false: NATS only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub direct_wakes: bool,
    /// The local services' WORKER_THREADS (0: one per core, the services' default).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// Most parked Pings a local frontend accepts (a process may open 20,000 files here).
    #[arg(long, default_value_t = 19_000)]
    pub frontend_max_connections: usize,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/directpush"
    )]
    pub database_url: String,
    /// One server, or with `--redis-mode cluster` a Redis Cluster's seed nodes, comma-separated.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The local services' REDIS_MODE: `single` or `cluster`.
    #[arg(long, env = "REDIS_MODE", default_value = "single")]
    pub redis_mode: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The local cluster's DP_NAMESPACE. Its Redis keys, streams and recorded Redis epochs are
    /// cleared before the local cluster starts and after it stops (a run starts from nothing,
    /// as a new deployment).
    #[arg(long, env = "DP_NAMESPACE", default_value = "loadtest")]
    pub namespace: String,
    /// Leave the local cluster's Redis keys, streams and epochs after the run, to look at them.
    #[arg(long)]
    pub keep_state: bool,
    /// A running deployment's device addresses (frontends or their load balancer).
    #[arg(long, value_delimiter = ',')]
    pub frontend: Vec<SocketAddr>,
    /// A running deployment's frontend admin addresses, for the parked gauge.
    #[arg(long, value_delimiter = ',')]
    pub admin: Vec<SocketAddr>,
    /// Process ids of running frontends on this machine, for their memory and CPU.
    #[arg(long, value_delimiter = ',')]
    pub frontend_pid: Vec<u32>,
    /// A running deployment's ingest address (the watcher's LISTEN_ADDR).
    #[arg(long)]
    pub ingest: Option<SocketAddr>,
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
    /// How devices authenticate: jwt (one mailbox per device, an HS256 token each) or basic
    /// (lt-N@load.test accounts sharing one password hash, provisioned in DATABASE_URL).
    #[arg(long, default_value = "jwt")]
    pub auth: String,
    /// The HS256 secret of a running deployment (a local cluster makes its own).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, default_value = "loadtest")]
    pub jwt_issuer: String,
    #[arg(long, default_value = "directpush")]
    pub jwt_audience: String,
    /// With basic auth: devices share this many mailboxes.
    #[arg(long, default_value_t = 1_000)]
    pub mailboxes: usize,
    /// HAProxy in front of the local frontends: `tcp` relays (TLS ends at the frontends),
    /// `tls` ends TLS itself (with --tls); both pass the client's address in PROXY v2.
    #[arg(long, value_enum, default_value = "none")]
    pub balancer: Balancer,
    /// Speak TLS; a local cluster gets a fresh CA and certificate.
    #[arg(long)]
    pub tls: bool,
    /// With --tls: local frontends share TLS_TICKET_KEYS, so a device resumes on any of
    /// them; without it each has its own ticket keys.
    #[arg(long)]
    pub shared_ticket_keys: bool,
    /// With --tls: the devices speak TLS 1.2 only, as older phones do (1.3 otherwise).
    #[arg(long)]
    pub tls12: bool,
    /// The CA that signed a running deployment's certificate (implies --tls).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// One service process, or one address of a running deployment.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Node {
    /// A local process without an admin port (the balancer).
    pub fn process(name: &str, addr: SocketAddr, child: Child) -> Node {
        Node {
            name: name.into(),
            addr,
            admin: None,
            pid: child.id(),
            child: Some(child),
        }
    }

    /// Kills the process at once, as a lost pod (SIGKILL: nothing is drained).
    pub async fn kill(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .context("only a local node can be killed")?;
        child.kill().await.context("killing")?;
        self.pid = None;
        self.admin = None;
        Ok(())
    }
}

pub struct Cluster {
    pub frontends: Vec<Node>,
    pub ingest: Option<SocketAddr>,
    pub ingest_token: Option<String>,
    pub auth: Auth,
    pub tls_ca: Option<PathBuf>,
    pub watchers: Vec<Node>,
    /// HAProxy in front of the frontends (`--balancer`).
    pub balancer: Option<Node>,
    /// A local cluster's settings: its namespace is cleared when it stops.
    local: Option<ClusterArgs>,
    _ca: Option<dp_testkit::tls::TestCa>,
}

const PASSWORD: &str = "loadtest";

impl Cluster {
    pub async fn start(args: &ClusterArgs, out: &Path) -> Result<Cluster> {
        if args.local_frontends == 0 {
            return Self::external(args).await;
        }
        let bin = bin_dir(args)?;
        let logs = out.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let secret = format!("{:032x}", rand::random::<u128>());
        let auth = auth(args, Some(secret.clone()))?;
        let token = format!("{:032x}", rand::random::<u128>());
        let ca = args.tls.then(|| {
            let ca = dp_testkit::tls::TestCa::new();
            ca.issue(1);
            ca
        });
        let common = vec![
            ("DATABASE_URL", args.database_url.clone()),
            ("REDIS_URL", args.redis_url.clone()),
            ("REDIS_MODE", args.redis_mode.clone()),
            ("NATS_URL", args.nats_url.clone()),
            ("DP_NAMESPACE", args.namespace.clone()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "warn".into()),
            ("WORKER_THREADS", args.worker_threads.to_string()),
        ];
        let frontend_bin = bin.join("ping-frontend");
        migrate(&frontend_bin, &common).await?;
        clear("before the run", args).await?;
        if let Auth::Basic {
            mailboxes,
            password,
        } = &auth
        {
            provision(&args.database_url, *mailboxes, password).await?;
        }
        let mut specs = watcher_specs(args, &bin, &common, &token);
        let env = frontend_env(args, common, &auth, secret, ca.as_ref())?;
        specs.extend((0..args.local_frontends).map(|f| Spec {
            bin: frontend_bin.clone(),
            name: format!("lt-fe-{f}"),
            env: env.clone(),
        }));
        let mut watchers = start_all(&specs, &logs).await?;
        let frontends = watchers.split_off(args.local_watchers);
        let balancer = match args.balancer {
            Balancer::None => None,
            mode => {
                let addrs: Vec<SocketAddr> = frontends.iter().map(|n| n.addr).collect();
                Some(crate::balancer::start(mode, &addrs, ca.as_ref(), &logs).await?)
            }
        };
        Ok(Cluster {
            ingest: watchers.first().map(|w| w.addr),
            ingest_token: Some(token),
            auth,
            tls_ca: ca.as_ref().map(|ca| ca.ca_pem()),
            frontends,
            watchers,
            balancer,
            local: Some(args.clone()),
            _ca: ca,
        })
    }

    async fn external(args: &ClusterArgs) -> Result<Cluster> {
        if args.frontend.is_empty() {
            bail!("name running frontends with --frontend, or start local ones with --local-frontends");
        }
        let auth = auth(args, args.jwt_secret.clone())?;
        if let Auth::Basic {
            mailboxes,
            password,
        } = &auth
        {
            provision(&args.database_url, *mailboxes, password).await?;
        }
        let frontends = args
            .frontend
            .iter()
            .enumerate()
            .map(|(i, addr)| Node {
                name: format!("frontend-{i}"),
                addr: *addr,
                admin: args.admin.get(i).copied(),
                pid: args.frontend_pid.get(i).copied(),
                child: None,
            })
            .collect();
        Ok(Cluster {
            frontends,
            ingest: args.ingest,
            ingest_token: args.ingest_token.clone(),
            auth,
            tls_ca: args.tls_ca.clone(),
            watchers: Vec::new(),
            balancer: None,
            local: None,
            _ca: None,
        })
    }

    /// Stops a local cluster's processes, then clears the namespace they wrote in (unless
    /// --keep-state); a running deployment is left as it is.
    pub async fn stop(mut self) -> Result<()> {
        let Some(args) = self.local.take() else {
            return Ok(());
        };
        let nodes = self.frontends.iter_mut().chain(&mut self.watchers);
        for node in nodes.chain(&mut self.balancer) {
            if node.pid.is_some() {
                node.kill().await?;
            }
        }
        if args.keep_state {
            return Ok(());
        }
        clear("after the run", &args).await
    }

    /// Parked Pings over the frontends (a killed one holds none), and how many did not answer.
    pub async fn parked(&self) -> (f64, usize) {
        let admins: Vec<SocketAddr> = self.frontends.iter().filter_map(|n| n.admin).collect();
        probe::parked(&admins).await
    }

    /// The processes a device's connection costs: the frontends, and the balancer if any.
    pub fn pids(&self) -> Vec<u32> {
        self.frontends
            .iter()
            .chain(&self.balancer)
            .filter_map(|n| n.pid)
            .collect()
    }

    /// Where devices connect: the balancer, or the frontends themselves.
    pub fn device_addrs(&self) -> Vec<SocketAddr> {
        match &self.balancer {
            Some(balancer) => vec![balancer.addr],
            None => self.frontends.iter().map(|n| n.addr).collect(),
        }
    }
}

/// Clears the namespace's Redis keys, streams and Redis epochs; says so when it held any.
pub async fn clear(when: &str, args: &ClusterArgs) -> Result<()> {
    let cleared = Namespace {
        name: &args.namespace,
        redis_mode: &args.redis_mode,
        redis_url: &args.redis_url,
        nats_url: &args.nats_url,
        database_url: &args.database_url,
    }
    .clear()
    .await
    .with_context(|| format!("clearing namespace {} {when}", args.namespace))?;
    if cleared != Cleared::default() {
        eprintln!(
            "loadtest: cleared namespace {} {when}: {} Redis keys, {} streams, {} epochs",
            args.namespace, cleared.keys, cleared.streams, cleared.epochs
        );
    }
    Ok(())
}

fn auth(args: &ClusterArgs, secret: Option<String>) -> Result<Auth> {
    Ok(match args.auth.as_str() {
        "jwt" => Auth::Jwt {
            secret: secret.context("--auth jwt against a running deployment needs JWT_SECRET")?,
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
        },
        "basic" => Auth::Basic {
            mailboxes: args.mailboxes.max(1),
            password: PASSWORD.into(),
        },
        other => bail!("--auth must be jwt or basic, not {other:?}"),
    })
}

/// Creates the `lt-N@load.test` accounts in one statement with one shared argon2 hash: a
/// million accounts cost one hash, not a million.
async fn provision(url: &str, mailboxes: usize, password: &str) -> Result<()> {
    let pool = dp_db::lazy_pool(url, 2)?;
    let hash = dp_db::accounts::hash_password(password)?;
    let names: Vec<String> = (0..mailboxes)
        .map(|m| format!("lt-{m}@load.test"))
        .collect();
    sqlx::query(
        "INSERT INTO accounts (name, password_hash)
         SELECT n, $2 FROM UNNEST($1::text[]) AS n
         ON CONFLICT (name) DO UPDATE SET password_hash = $2, disabled = false",
    )
    .bind(&names)
    .bind(&hash)
    .execute(&pool)
    .await
    .context("provisioning the load-test accounts")?;
    Ok(())
}

/// Where the service binaries are: --bin-dir, or beside this one.
fn bin_dir(args: &ClusterArgs) -> Result<PathBuf> {
    match &args.bin_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the loadtest binary's directory")?
            .to_owned()),
    }
}

/// The watchers: the shared environment, the ingest token and the dispatch settings.
fn watcher_specs(args: &ClusterArgs, bin: &Path, common: &Env, token: &str) -> Vec<Spec> {
    (0..args.local_watchers)
        .map(|w| {
            let mut env = common.clone();
            env.push(("INGEST_TOKEN", token.to_owned()));
            env.push(("COALESCE_MS", args.coalesce_ms.to_string()));
            env.push(("WAKE_AT_INGEST", args.wake_at_ingest.to_string()));
            env.push(("DIRECT_WAKES", args.direct_wakes.to_string()));
            Spec {
                bin: bin.join("mailbox-watcher"),
                name: format!("lt-w-{w}"),
                env,
            }
        })
        .collect()
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A service process to start: its binary, name and environment (ports are added at start).
struct Spec {
    bin: PathBuf,
    name: String,
    env: Env,
}

/// Starts every node, then waits for each to be ready. One that exits first is started again
/// on fresh ports, twice at most: its ports were free when picked, but another process (a
/// parallel test's) may take one before the service binds it.
async fn start_all(specs: &[Spec], logs: &Path) -> Result<Vec<Node>> {
    let mut nodes = specs
        .iter()
        .map(|spec| spawn(spec, logs))
        .collect::<Result<Vec<_>>>()?;
    for (node, spec) in nodes.iter_mut().zip(specs) {
        let mut starts = 1;
        while !wait_ready(node).await? {
            if starts == 3 {
                bail!(
                    "{} exited before it was ready, {starts} times; see its log",
                    node.name
                );
            }
            starts += 1;
            *node = spawn(spec, logs)?;
        }
    }
    Ok(nodes)
}

fn spawn(spec: &Spec, logs: &Path) -> Result<Node> {
    let (addr, admin) = (free_port()?, free_port()?);
    let name = spec.name.as_str();
    let mut env = spec.env.clone();
    env.push(("POD_NAME", name.into()));
    env.push(("LISTEN_ADDR", addr.to_string()));
    env.push(("ADMIN_ADDR", admin.to_string()));
    // Appended to: a start that failed keeps its lines above the next one's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))?;
    let child = Command::new(&spec.bin)
        .envs(env)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", spec.bin.display()))?;
    Ok(Node {
        name: name.into(),
        addr,
        admin: Some(admin),
        pid: child.id(),
        child: Some(child),
    })
}

/// True once the node answers ready on ports it holds itself; false if its process exited
/// first. (A ready answer from a port another process took is not this node's.)
async fn wait_ready(node: &mut Node) -> Result<bool> {
    let Some(admin) = node.admin else {
        return Ok(true);
    };
    let ports = [admin.port(), node.addr.port()];
    let owns =
        |pid: Option<u32>| pid.is_some_and(|pid| ports.iter().all(|p| probe::listens(pid, *p)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if probe::ready(admin).await && owns(node.pid) {
            return Ok(true);
        }
        if let Some(child) = node.child.as_mut() {
            if child.try_wait()?.is_some() {
                return Ok(false);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} was not ready within 60 s; see its log", node.name)
}

/// A ticket key file with one fresh random key, beside the CA's certificate.
pub fn ticket_keys(ca: &dp_testkit::tls::TestCa) -> Result<PathBuf> {
    use base64::Engine;
    let key: [u8; 48] = std::array::from_fn(|_| rand::random());
    let path = ca.dir.join("ticket-keys");
    let line = base64::engine::general_purpose::STANDARD.encode(key);
    std::fs::write(&path, format!("{line}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

type Env = Vec<(&'static str, String)>;

/// The frontends' schema, made once before any of them starts.
async fn migrate(frontend_bin: &Path, common: &Env) -> Result<()> {
    let status = Command::new(frontend_bin)
        .arg("migrate")
        .envs(common.iter().cloned())
        .status()
        .await
        .with_context(|| format!("running {} migrate", frontend_bin.display()))?;
    if !status.success() {
        bail!("ping-frontend migrate failed ({status})");
    }
    Ok(())
}

/// The local frontends' settings: the load test's limits, its authentication, and TLS unless a
/// balancer terminates it.
fn frontend_env(
    args: &ClusterArgs,
    mut env: Env,
    auth: &Auth,
    secret: String,
    ca: Option<&dp_testkit::tls::TestCa>,
) -> Result<Env> {
    env.extend([
        ("MIN_HEARTBEAT", "1".into()),
        ("MAX_CONNECTIONS", args.frontend_max_connections.to_string()),
        ("MAX_CONNECTIONS_PER_SOURCE", "0".into()),
        ("PINGS_PER_DEVICE_PER_MINUTE", "0".into()),
        ("DATABASE_POOL_SIZE", "2".into()),
        ("DRAIN_DELAY_SECS", "0".into()),
        ("DRAIN_SECS", "2".into()),
    ]);
    if args.direct_wakes {
        env.push(("WAKE_LISTEN_ADDR", "127.0.0.1:0".into()));
    }
    match auth {
        Auth::Jwt {
            issuer, audience, ..
        } => env.extend([
            ("AUTH_MODE", "jwt".into()),
            ("JWT_SECRET", secret),
            ("JWT_ISSUER", issuer.clone()),
            ("JWT_AUDIENCE", audience.clone()),
        ]),
        Auth::Basic { .. } => env.push(("AUTH_MODE", "local".into())),
    }
    if let Some(upstream) = &args.upstream {
        env.push(("UPSTREAM_URL", upstream.clone()));
    }
    match (ca, args.balancer) {
        (Some(_), Balancer::Tls) | (None, _) => {}
        (Some(ca), _) => {
            env.push(("TLS_CERT", ca.cert_path().display().to_string()));
            env.push(("TLS_KEY", ca.key_path().display().to_string()));
            if args.shared_ticket_keys {
                env.push(("TLS_TICKET_KEYS", ticket_keys(ca)?.display().to_string()));
            }
        }
    }
    if args.balancer != Balancer::None {
        env.push(("PROXY_PROTOCOL", "true".into()));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that exits at start (as one that lost its port to another process does) is
    /// started again, and after its third exit the run stops at once, naming it: not after
    /// the 60 s readiness wait.
    #[tokio::test]
    async fn a_node_that_exits_before_ready_is_started_again_then_named() {
        let logs = std::env::temp_dir().join(format!("lt-start-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("log dir");
        let specs = [Spec {
            bin: PathBuf::from("/bin/sh"),
            name: "lt-exits".into(),
            env: Vec::new(),
        }];
        let err = match start_all(&specs, &logs).await {
            Ok(_) => panic!("a process that exits is not ready"),
            Err(err) => err.to_string(),
        };
        // The exit is seen, not the readiness wait's 60 s timeout ("was not ready within").
        assert_eq!(
            err,
            "lt-exits exited before it was ready, 3 times; see its log"
        );
        let _ = std::fs::remove_dir_all(logs);
    }
}
