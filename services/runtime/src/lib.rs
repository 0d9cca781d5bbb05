//! What every directpush service shares: the drain signal handed to every server and
//! connection, logging, the admin server, listeners with an explicit backlog, and the typed
//! configuration error that exits 64 before any port is bound.
#![forbid(unsafe_code)]

pub mod admin;
pub mod frames;
pub mod listener;
pub mod logging;
pub mod nats;
pub mod redis;
pub mod shutdown;
pub mod telemetry;

/// Exit code for bad configuration (EX_USAGE), before any port is bound.
pub const EXIT_CONFIG: i32 = 64;

/// A setting that cannot be used, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

/// The settings every service shares, flattened into each one's flags.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// NATS servers, comma-separated; credentials in the URL (`nats://user:password@host`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// `redis://[user]:password@host:port[/db]` (`rediss://` for TLS); with
    /// `REDIS_MODE=cluster`, the cluster's seed nodes, comma-separated.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// `single` (one server) or `cluster` (a Redis Cluster).
    #[arg(long, env = "REDIS_MODE", default_value = "single")]
    pub redis_mode: String,
    /// Replicas that must hold a write a wake rests on before it counts (Redis `WAIT`);
    /// default 1 in cluster mode, 0 for a single server.
    #[arg(long, env = "REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,
    /// How long a write waits for those replicas before it is treated as failed.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_wait_timeout_ms: u64,
    /// Prefix of every Redis key, NATS subject and JetStream stream.
    #[arg(long = "namespace", env = "DP_NAMESPACE", default_value = "dp")]
    pub namespace: String,
    /// This pod's name in owner records and subjects; default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// `json` (for containers) or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Runtime worker threads (0: one per core). Many pods sharing few cores (a load test on
    /// one machine) spend less on context switches with 1.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// The secret a watcher shows a frontend's direct wake port (`WAKE_LISTEN_ADDR`), the same
    /// on every pod of the namespace; empty: none (keep the port off the public network).
    #[arg(long, env = "WAKE_SECRET", default_value = "", hide_env_values = true)]
    pub wake_secret: String,
}

/// [`CommonArgs`], checked.
#[derive(Clone, Debug)]
pub struct Common {
    pub nats: nats::NatsServers,
    pub redis: redis::RedisServers,
    pub namespace: String,
    pub pod: String,
    pub log_format: logging::LogFormat,
    pub worker_threads: usize,
    pub wake_secret: String,
}

impl CommonArgs {
    pub fn check(self) -> Result<Common, ConfigError> {
        check_namespace(&self.namespace)?;
        Ok(Common {
            pod: pod_name(self.pod_name)?,
            log_format: self
                .log_format
                .parse()
                .map_err(|e| ConfigError::new("LOG_FORMAT", e))?,
            nats: nats::NatsServers::parse(&self.nats_url)?,
            redis: redis::RedisServers::parse(
                &self.redis_mode,
                &self.redis_url,
                self.redis_wait_replicas,
                self.redis_wait_timeout_ms,
            )?,
            namespace: self.namespace,
            worker_threads: self.worker_threads,
            wake_secret: self.wake_secret,
        })
    }
}

/// A `host:port` setting.
pub fn parse_addr(setting: &'static str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(setting, format!("{value:?} is not host:port")))
}

/// `DP_NAMESPACE`: one subject token, one Redis key part, part of a stream name.
pub fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    if dp_proto::events::valid_namespace(namespace) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "DP_NAMESPACE",
            "1-64 letters, digits, '-' or '_'",
        ))
    }
}

/// `POD_NAME`, defaulting to the host name.
pub fn pod_name(configured: Option<String>) -> Result<String, ConfigError> {
    let pod = configured.unwrap_or_else(host_name);
    if valid_pod_name(&pod) {
        Ok(pod)
    } else {
        Err(ConfigError::new(
            "POD_NAME",
            format!("{pod:?}: 1-253 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// Readiness from a list of problems: ready when there are none.
pub fn ready_unless(problems: Vec<&str>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A service's `main`: configuration errors exit 64 before anything starts; then logging, a
/// runtime, and `work`, whose error is logged once and exits 1.
pub fn main<C, F, Fut>(
    program: &str,
    config: Result<C, ConfigError>,
    runtime_of: impl Fn(&C) -> (logging::LogFormat, usize),
    work: F,
) -> std::process::ExitCode
where
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{program}: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let (log_format, worker_threads) = runtime_of(&config);
    // Dropped last: flushes the spans still queued.
    let _telemetry = telemetry::init(program, log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{program}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "{program} stopped");
            eprintln!("{program}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Microseconds since the Unix epoch, the unit events carry.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// The machine's host name, the default pod name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "directpush".to_owned())
}

/// Whether a pod name is usable in subjects and owner records: 1-253 of letters, digits,
/// `-`, `_` and `.` (Kubernetes pod names are a subset).
pub fn valid_pod_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
