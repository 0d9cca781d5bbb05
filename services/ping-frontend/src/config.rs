//! The frontend's settings: flags with environment fallbacks, checked into a typed [`Config`]
//! before any port is bound.

use std::net::SocketAddr;
use std::time::Duration;

use dp_proto::ping::PingLimits;
use dp_runtime::{parse_addr, ConfigError};

#[derive(clap::Args, Clone, Debug)]
pub struct FrontendArgs {
    /// Where devices connect (plain HTTP/1.1; put TLS in front until TLS_CERT lands).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
    /// /healthz, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: String,
    #[command(flatten)]
    pub common: dp_runtime::CommonArgs,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/directpush"
    )]
    pub database_url: String,
    /// Most PostgreSQL connections this pod opens (history writes and password checks).
    /// Many pods on one database: keep pods × this under the server's max_connections.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 8)]
    pub database_pool_size: u32,
    /// Shortest heartbeat accepted, in seconds (Status 5 below it).
    #[arg(long, env = "MIN_HEARTBEAT", default_value_t = 60)]
    pub min_heartbeat: u32,
    /// Longest heartbeat accepted, in seconds (Status 5 above it).
    #[arg(long, env = "MAX_HEARTBEAT", default_value_t = 3540)]
    pub max_heartbeat: u32,
    /// Most folders one Ping may monitor (Status 6 above it).
    #[arg(long, env = "MAX_FOLDERS", default_value_t = 300)]
    pub max_folders: usize,
    /// Open connections beyond which new ones get 503 + Retry-After.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 200_000)]
    pub max_connections: usize,
    /// PEM certificate chain: with TLS_KEY, the Ping listener speaks TLS (1.2 and 1.3).
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of TLS_CERT.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Session ticket keys shared by every pod, one base64 key (32 bytes or more) a line, the
    /// sealing key first: devices then resume on any pod, not only the one they last saw.
    #[arg(long, env = "TLS_TICKET_KEYS")]
    pub tls_ticket_keys: Option<std::path::PathBuf>,
    /// Seconds between checks of the certificate files for changes (SIGHUP reloads at once).
    #[arg(long, env = "TLS_RELOAD_SECS", default_value_t = 10)]
    pub tls_reload_secs: u64,
    /// Open connections from one source address beyond which new ones get 503 (0: no limit).
    /// Carrier NAT puts many phones behind one address: keep it generous.
    #[arg(long, env = "MAX_CONNECTIONS_PER_SOURCE", default_value_t = 10_000)]
    pub max_connections_per_source: usize,
    /// The device port expects a PROXY protocol header (v1 or v2) on every connection, and
    /// keys every per-source limit on the client address it carries.
    #[arg(long, env = "PROXY_PROTOCOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub proxy_protocol: bool,
    /// Peers (addresses or networks, comma-separated) whose X-Forwarded-For names the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Pings one device may send per minute before it gets 503 + Retry-After (0: no limit).
    #[arg(long, env = "PINGS_PER_DEVICE_PER_MINUTE", default_value_t = 60)]
    pub pings_per_device_per_minute: u32,
    /// Pings one mailbox's devices together may send per minute to one pod (0: no limit).
    #[arg(long, env = "PINGS_PER_MAILBOX_PER_MINUTE", default_value_t = 0)]
    pub pings_per_mailbox_per_minute: u32,
    /// Devices one mailbox may have state for; a Ping from a device beyond them is refused with
    /// 503 (Exchange's EASMaxDevices; 0: no limit).
    #[arg(long, env = "MAX_DEVICES_PER_MAILBOX", default_value_t = 100)]
    pub max_devices_per_mailbox: u32,
    /// Seconds a client is told to wait in Retry-After.
    #[arg(long, env = "RETRY_AFTER_SECS", default_value_t = 30)]
    pub retry_after_secs: u32,
    #[arg(long, env = "LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Share the listen port with other processes (SO_REUSEPORT).
    #[arg(long, env = "REUSE_PORT", default_value_t = false)]
    pub reuse_port: bool,
    /// How long a device's cached parameters and versions live without a Ping.
    #[arg(long, env = "DEVICE_STATE_TTL_DAYS", default_value_t = 30)]
    pub device_state_ttl_days: u32,
    /// Redis round trips slower than this answer Status 8.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,
    /// Largest request head accepted (431 above it).
    #[arg(long, env = "MAX_HEAD_BYTES", default_value_t = 16 * 1024)]
    pub max_head_bytes: usize,
    /// Largest request body accepted (413 above it).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds an idle keep-alive connection stays open between requests.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 120)]
    pub idle_timeout_secs: u64,
    /// Seconds a write to a device may wait for it to read: past this the connection closes
    /// (a client that pipelines requests and never reads the answers).
    #[arg(long, env = "WRITE_TIMEOUT_SECS", default_value_t = 30)]
    pub write_timeout_secs: u64,
    /// Seconds written bytes may go unacknowledged before the kernel fails the connection (TCP
    /// user timeout): a Status 2 lost that way, on a handover, is reported again.
    #[arg(long, env = "DELIVERY_TIMEOUT_SECS", default_value_t = 30)]
    pub delivery_timeout_secs: u64,
    /// A reset of a connection soon after its Status 2 means the device did not read it, and
    /// its folders are news again (standalone mode). "false" behind a balancer that ends HTTP
    /// and resets the pod's side whenever it closes it, read or not (HAProxy in `mode http`):
    /// there every such reset is noise, and each would repeat a Status 2.
    #[arg(long, env = "DELIVERY_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub delivery_check: bool,
    /// Seconds a request head and body may take to arrive once started.
    #[arg(long, env = "HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub header_timeout_secs: u64,
    /// `local` (Basic credentials against the accounts table), `jwt` (bearer tokens), or
    /// `upstream` (proxy mode: credentials the upstream ActiveSync server accepted).
    #[arg(long, env = "AUTH_MODE", default_value = "local")]
    pub auth_mode: String,
    /// HS256 secret of the bearer tokens (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A JWKS file with the RS256/ES256 public keys of the bearer tokens.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,
    /// Required `iss` of the bearer tokens.
    #[arg(long, env = "JWT_ISSUER", default_value = "")]
    pub jwt_issuer: String,
    /// Required `aud` of the bearer tokens.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "")]
    pub jwt_audience: String,
    /// The claim that names the mailbox.
    #[arg(long, env = "JWT_MAILBOX_CLAIM", default_value = "email")]
    pub jwt_mailbox_claim: String,
    /// Clock skew allowed on `exp`, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// Failed logins from one address per minute, after which its logins get 503 +
    /// Retry-After without being checked (0: no limit).
    #[arg(long, env = "AUTH_FAILURES_PER_SOURCE", default_value_t = 100)]
    pub auth_failures_per_source: u32,
    /// Failed logins to one account per minute, after which its uncached logins get 503 +
    /// Retry-After (0: no limit). Devices whose credentials are cached are not affected.
    #[arg(long, env = "AUTH_FAILURES_PER_ACCOUNT", default_value_t = 10)]
    pub auth_failures_per_account: u32,
    /// Logins that may wait for a password check (argon2) on this pod; more are answered 503
    /// at once, so an anonymous flood cannot queue the real logins behind it.
    #[arg(long, env = "AUTH_VERIFY_QUEUE", default_value_t = 64)]
    pub auth_verify_queue: usize,
    #[arg(long, env = "AUTH_CACHE_SIZE", default_value_t = 100_000)]
    pub auth_cache_size: usize,
    /// Seconds a verified credential is trusted without asking the database again.
    #[arg(long, env = "AUTH_CACHE_TTL_SECS", default_value_t = 300)]
    pub auth_cache_ttl_secs: u64,
    #[arg(long, env = "HISTORY_QUEUE", default_value_t = 65_536)]
    pub history_queue: usize,
    #[arg(long, env = "HISTORY_BATCH", default_value_t = 500)]
    pub history_batch: usize,
    #[arg(long, env = "HISTORY_RETENTION_DAYS", default_value_t = 30)]
    pub history_retention_days: u32,
    /// Seconds between SIGTERM and no longer accepting: the pod reports not ready at once and
    /// keeps serving while load balancers notice.
    #[arg(long, env = "DRAIN_DELAY_SECS", default_value_t = 5)]
    pub drain_delay_secs: u64,
    /// Seconds over which parked Pings are answered (Status 1) once the pod stops accepting,
    /// spread evenly so devices reconnect elsewhere without a herd.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
    /// Apply database migrations at start-up.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = false)]
    pub migrate_on_start: bool,
    /// Where watchers may send wakes directly, skipping the NATS server's hop (empty: NATS
    /// only). Keep it off the public network, or set WAKE_SECRET.
    #[arg(long, env = "WAKE_LISTEN_ADDR", default_value = "")]
    pub wake_listen_addr: String,
    /// The host watchers dial for WAKE_LISTEN_ADDR (the pod's IP); needed when it listens on
    /// every address.
    #[arg(long, env = "WAKE_ADVERTISE_HOST", default_value = "")]
    pub wake_advertise_host: String,
    #[command(flatten)]
    pub upstream: crate::proxy::UpstreamArgs,
}

/// Checked settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The settings every service shares (stores, namespace, pod, logs, runtime).
    pub common: dp_runtime::Common,
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub database_url: String,
    pub database_pool_size: u32,
    pub limits: PingLimits,
    pub max_connections: usize,
    pub tls: Option<crate::tls::TlsFiles>,
    pub max_connections_per_source: usize,
    pub proxy_protocol: bool,
    pub trusted_proxies: crate::client::TrustedProxies,
    pub pings_per_device_per_minute: u32,
    pub pings_per_mailbox_per_minute: u32,
    pub max_devices_per_mailbox: u32,
    pub retry_after_secs: u32,
    pub listen_backlog: u32,
    pub reuse_port: bool,
    pub device_state_ttl: Duration,
    pub redis_timeout: Duration,
    pub idle_timeout: Duration,
    pub sizes: crate::http::request::SizeLimits,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub delivery_timeout: Duration,
    /// DELIVERY_CHECK: a reset soon after a Status 2 reopens its folders.
    pub delivery_check: bool,
    pub auth_cache_size: usize,
    pub auth_cache_ttl: Duration,
    pub auth_failures_per_source: u32,
    pub auth_failures_per_account: u32,
    pub auth_verify_queue: usize,
    /// `None`: local accounts (or the upstream's word); `Some`: bearer tokens.
    pub jwt: Option<crate::jwt::JwtSettings>,
    /// `AUTH_MODE=upstream`: a Ping's credentials are those the upstream vouched for.
    pub upstream_auth: bool,
    pub history: dp_db::history::WriterConfig,
    pub migrate_on_start: bool,
    pub drain_delay: Duration,
    pub drain: Duration,
    /// Proxy mode: the ActiveSync server every command but Ping goes to.
    pub upstream: Option<crate::proxy::UpstreamConfig>,
    /// Direct wakes from watchers (`WAKE_LISTEN_ADDR`); `None`: NATS only.
    pub wake_link: Option<crate::wake_link::WakeLinkConfig>,
}

fn positive(setting: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(setting, "must be more than 0"));
    }
    Ok(())
}

/// The TLS files, each read once so a mistake stops the start, not the first handshake.
fn tls_files(
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    ticket_keys: Option<std::path::PathBuf>,
    reload_secs: u64,
) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    let (cert, key) = match (cert, key, &ticket_keys) {
        (None, None, None) => return Ok(None),
        (None, None, Some(_)) => {
            return Err(ConfigError::new(
                "TLS_TICKET_KEYS",
                "needs TLS_CERT and TLS_KEY: tickets are for the TLS listener",
            ))
        }
        (Some(cert), Some(key), _) => (cert, key),
        _ => return Err(ConfigError::new("TLS_CERT/TLS_KEY", "set both, or neither")),
    };
    let files = crate::tls::TlsFiles {
        cert,
        key,
        ticket_keys,
        reload_every: Duration::from_secs(reload_secs.max(1)),
    };
    crate::tls::load(&files).map_err(|reason| ConfigError::new("TLS_CERT/TLS_KEY", reason))?;
    if let Some(path) = &files.ticket_keys {
        crate::tls::tickets::TicketKeys::read(path)
            .map_err(|reason| ConfigError::new("TLS_TICKET_KEYS", reason))?;
    }
    Ok(Some(files))
}

/// WAKE_LISTEN_ADDR and WAKE_ADVERTISE_HOST, checked.
fn wake_link(
    listen: &str,
    advertise_host: &str,
) -> Result<Option<crate::wake_link::WakeLinkConfig>, ConfigError> {
    if listen.is_empty() {
        if !advertise_host.is_empty() {
            return Err(ConfigError::new(
                "WAKE_ADVERTISE_HOST",
                "set without WAKE_LISTEN_ADDR: there is no wake port to advertise",
            ));
        }
        return Ok(None);
    }
    let listen = parse_addr("WAKE_LISTEN_ADDR", listen)?;
    let advertise_host = (!advertise_host.is_empty()).then(|| advertise_host.to_owned());
    if listen.ip().is_unspecified() && advertise_host.is_none() {
        return Err(ConfigError::new(
            "WAKE_ADVERTISE_HOST",
            format!("needed with WAKE_LISTEN_ADDR {listen}: watchers cannot dial every address (give the pod's IP)"),
        ));
    }
    Ok(Some(crate::wake_link::WakeLinkConfig {
        listen,
        advertise_host,
    }))
}

impl FrontendArgs {
    /// The numeric settings: within their bounds, and consistent with each other.
    fn check_numbers(&self, common: &dp_runtime::Common) -> Result<(), ConfigError> {
        if self.min_heartbeat == 0 || self.min_heartbeat > self.max_heartbeat {
            return Err(ConfigError::new(
                "MIN_HEARTBEAT",
                format!(
                    "must be between 1 and MAX_HEARTBEAT ({})",
                    self.max_heartbeat
                ),
            ));
        }
        positive("MAX_FOLDERS", self.max_folders as u64)?;
        positive("MAX_HEAD_BYTES", self.max_head_bytes as u64)?;
        positive("MAX_BODY_BYTES", self.max_body_bytes as u64)?;
        positive("MAX_CONNECTIONS", self.max_connections as u64)?;
        positive("DATABASE_POOL_SIZE", u64::from(self.database_pool_size))?;
        positive("DEVICE_STATE_TTL_DAYS", self.device_state_ttl_days.into())?;
        positive("REDIS_TIMEOUT_MS", self.redis_timeout_ms)?;
        if common.redis.wait_replicas > 0
            && common.redis.wait_timeout.as_millis() >= u128::from(self.redis_timeout_ms)
        {
            return Err(ConfigError::new(
                "REDIS_WAIT_TIMEOUT_MS",
                format!(
                    "must be below REDIS_TIMEOUT_MS ({}): a claim waits for its replica inside it",
                    self.redis_timeout_ms
                ),
            ));
        }
        positive("HEADER_TIMEOUT_SECS", self.header_timeout_secs)?;
        positive("IDLE_TIMEOUT_SECS", self.idle_timeout_secs)?;
        positive("WRITE_TIMEOUT_SECS", self.write_timeout_secs)?;
        positive("DELIVERY_TIMEOUT_SECS", self.delivery_timeout_secs)?;
        positive("HISTORY_BATCH", self.history_batch as u64)?;
        positive("HISTORY_QUEUE", self.history_queue as u64)?;
        positive("AUTH_CACHE_SIZE", self.auth_cache_size as u64)?;
        Ok(())
    }

    /// AUTH_MODE=jwt's settings, checked; `None` for the other modes.
    fn jwt(&self) -> Result<Option<crate::jwt::JwtSettings>, ConfigError> {
        Ok(match self.auth_mode.as_str() {
            "local" | "upstream" => None,
            "jwt" => Some(
                crate::jwt::JwtSettings::new(
                    self.jwt_secret.as_deref(),
                    self.jwt_jwks_file.as_deref(),
                    self.jwt_issuer.clone(),
                    self.jwt_audience.clone(),
                    self.jwt_mailbox_claim.clone(),
                    self.jwt_leeway_secs,
                )
                .map_err(|reason| ConfigError::new("AUTH_MODE=jwt", reason))?,
            ),
            other => {
                return Err(ConfigError::new(
                    "AUTH_MODE",
                    format!("{other:?} is not local, jwt or upstream"),
                ))
            }
        })
    }

    pub fn check(self) -> Result<Config, ConfigError> {
        // Cloned, not moved: the checks below borrow the rest of `self`.
        let common = self.common.clone().check()?;
        self.check_numbers(&common)?;
        let jwt = self.jwt()?;
        let tls = tls_files(
            self.tls_cert,
            self.tls_key,
            self.tls_ticket_keys,
            self.tls_reload_secs,
        )?;
        let upstream = self.upstream.check()?;
        let wake_link = wake_link(&self.wake_listen_addr, &self.wake_advertise_host)?;
        let upstream_auth = self.auth_mode == "upstream";
        if upstream_auth && upstream.is_none() {
            return Err(ConfigError::new(
                "AUTH_MODE=upstream",
                "needs UPSTREAM_URL: the upstream is what vouches for credentials",
            ));
        }
        Ok(Config {
            common,
            listen_addr: parse_addr("LISTEN_ADDR", &self.listen_addr)?,
            admin_addr: parse_addr("ADMIN_ADDR", &self.admin_addr)?,
            database_url: self.database_url,
            database_pool_size: self.database_pool_size,
            limits: PingLimits {
                min_heartbeat: self.min_heartbeat,
                max_heartbeat: self.max_heartbeat,
                max_folders: self.max_folders,
            },
            max_connections: self.max_connections,
            tls,
            max_connections_per_source: self.max_connections_per_source,
            proxy_protocol: self.proxy_protocol,
            trusted_proxies: crate::client::TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|reason| ConfigError::new("TRUSTED_PROXIES", reason))?,
            pings_per_device_per_minute: self.pings_per_device_per_minute,
            pings_per_mailbox_per_minute: self.pings_per_mailbox_per_minute,
            max_devices_per_mailbox: self.max_devices_per_mailbox,
            retry_after_secs: self.retry_after_secs,
            listen_backlog: self.listen_backlog,
            reuse_port: self.reuse_port,
            device_state_ttl: Duration::from_secs(u64::from(self.device_state_ttl_days) * 86_400),
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            sizes: crate::http::request::SizeLimits {
                head: self.max_head_bytes,
                body: self.max_body_bytes,
            },
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            write_timeout: Duration::from_secs(self.write_timeout_secs),
            delivery_timeout: Duration::from_secs(self.delivery_timeout_secs),
            delivery_check: self.delivery_check,
            auth_cache_size: self.auth_cache_size,
            auth_failures_per_source: self.auth_failures_per_source,
            auth_failures_per_account: self.auth_failures_per_account,
            auth_verify_queue: self.auth_verify_queue,
            jwt,
            auth_cache_ttl: Duration::from_secs(self.auth_cache_ttl_secs),
            history: dp_db::history::WriterConfig {
                queue: self.history_queue,
                batch: self.history_batch,
                linger: Duration::from_millis(500),
                retention_days: self.history_retention_days,
            },
            migrate_on_start: self.migrate_on_start,
            drain_delay: Duration::from_secs(self.drain_delay_secs),
            drain: Duration::from_secs(self.drain_secs),
            upstream_auth,
            upstream,
            wake_link,
        })
    }
}
