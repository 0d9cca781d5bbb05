//! Proxy mode (`UPSTREAM_URL`): every command but Ping goes to the ActiveSync server behind
//! us, streamed both ways byte for byte; FolderSync and Sync are read on the way past, so Pings
//! answered here know the device's folders and what it has synced (ARCHITECTURE.md section 6).
//!
//! [`forward`] moves the bytes, `body` frames the device's request body, `headers` decides
//! which headers cross, and `observe` turns what passed into Redis state.

mod body;
mod forward;
mod headers;
mod observe;
mod options;
pub mod probe;
pub mod vouch;

use std::path::PathBuf;
use std::time::Duration;

use dp_runtime::ConfigError;

pub use forward::forward;

#[derive(clap::Args, Clone, Debug)]
pub struct UpstreamArgs {
    /// The upstream ActiveSync server's endpoint, e.g.
    /// https://mail.example.com/Microsoft-Server-ActiveSync. Set: proxy mode (every command but
    /// Ping is forwarded there).
    #[arg(long, env = "UPSTREAM_URL")]
    pub upstream_url: Option<String>,
    /// PEM file of the CA(s) that sign the upstream's certificate, beside the system's roots.
    #[arg(long, env = "UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Seconds the upstream may take to start its answer, and between two pieces of it. Sync
    /// may hold a request for its Wait (up to 59 minutes), so keep this above that.
    #[arg(long, env = "UPSTREAM_TIMEOUT_SECS", default_value_t = 3660)]
    pub upstream_timeout_secs: u64,
    /// Seconds to open a connection (TCP and TLS) to the upstream.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub upstream_connect_timeout_secs: u64,
    /// Idle keep-alive connections kept open to the upstream, per pod.
    #[arg(long, env = "UPSTREAM_POOL_IDLE", default_value_t = 256)]
    pub upstream_pool_idle: usize,
    /// Seconds between a parked Ping's GetItemEstimate probes of the upstream (0: none): they
    /// catch a missed event, and a remote wipe or new policy for a device that only Pings.
    #[arg(long, env = "PROXY_PROBE_SECS", default_value_t = 900)]
    pub proxy_probe_secs: u64,
    /// The probe's interval for a device whose folders are not known yet (enrolled before the
    /// proxy; no FolderSync seen): it runs on the probe alone until its next FolderSync.
    #[arg(long, env = "PROXY_PROBE_UNKNOWN_SECS", default_value_t = 120)]
    pub proxy_probe_unknown_secs: u64,
}

/// Checked upstream settings.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub url: reqwest::Url,
    pub ca: Option<Vec<u8>>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_idle: usize,
    /// `None`: the probe is off.
    pub probe: Option<Duration>,
    pub probe_unknown: Duration,
}

impl UpstreamArgs {
    pub fn check(self) -> Result<Option<UpstreamConfig>, ConfigError> {
        let Some(url) = self.upstream_url.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(&url)
            .map_err(|e| ConfigError::new("UPSTREAM_URL", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new(
                "UPSTREAM_URL",
                "must be an http:// or https:// URL with a host",
            ));
        }
        if url.query().is_some() {
            return Err(ConfigError::new(
                "UPSTREAM_URL",
                "must not carry a query: each device's query is appended as it came",
            ));
        }
        let ca = match self.upstream_ca {
            None => None,
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    ConfigError::new("UPSTREAM_CA", format!("{}: {e}", path.display()))
                })?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|certs| !certs.is_empty())
                    .ok_or_else(|| {
                        ConfigError::new(
                            "UPSTREAM_CA",
                            format!("{} holds no PEM certificate", path.display()),
                        )
                    })?;
                Some(pem)
            }
        };
        if self.upstream_timeout_secs == 0 || self.upstream_connect_timeout_secs == 0 {
            return Err(ConfigError::new(
                "UPSTREAM_TIMEOUT_SECS/UPSTREAM_CONNECT_TIMEOUT_SECS",
                "must be more than 0",
            ));
        }
        Ok(Some(UpstreamConfig {
            url,
            ca,
            timeout: Duration::from_secs(self.upstream_timeout_secs),
            connect_timeout: Duration::from_secs(self.upstream_connect_timeout_secs),
            pool_idle: self.upstream_pool_idle,
            probe: (self.proxy_probe_secs > 0).then(|| Duration::from_secs(self.proxy_probe_secs)),
            probe_unknown: Duration::from_secs(self.proxy_probe_unknown_secs.max(1)),
        }))
    }
}

/// The pooled keep-alive client for the upstream.
pub struct Upstream {
    pub config: UpstreamConfig,
    client: reqwest::Client,
    options: options::OptionsCache,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> anyhow::Result<Upstream> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .http1_only()
            // 3xx answers are the device's to follow, as every other answer.
            .redirect(reqwest::redirect::Policy::none())
            // The upstream is reached directly; an egress proxy from the environment would
            // surprise an operator more than it would help one.
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.pool_idle)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(pem) = &config.ca {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Upstream {
            client: builder.build()?,
            config,
            options: options::OptionsCache::default(),
        })
    }

    /// The upstream URL for a device's query string, which is passed unchanged.
    fn url(&self, query: &str) -> reqwest::Url {
        let mut url = self.config.url.clone();
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        url
    }
}
