//! `loadtest park`: parks N devices on running frontends and reports how much memory each
//! parked Ping costs the frontend process (RSS growth / parked Pings).
//!
//! Accounts are provisioned in one statement with one shared argon2 hash, so a million devices
//! cost one hash, not a million.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use dp_proto::ping::{FolderClass, PingFolder, PingRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser)]
#[command(name = "loadtest", about = "directpush load tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Park devices and measure the frontend's memory per parked Ping.
    Park(ParkArgs),
}

#[derive(clap::Args)]
struct ParkArgs {
    /// Frontend device address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    frontend: SocketAddr,
    /// Frontend admin address (for the parked gauge).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// The frontend's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Devices are spread over this many mailboxes.
    #[arg(long, default_value_t = 1_000)]
    mailboxes: usize,
    /// Seconds each Ping parks for (within the frontend's MIN/MAX_HEARTBEAT).
    #[arg(long, default_value_t = 600)]
    heartbeat: u32,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Local source addresses to spread connections over (127.0.0.0/8).
    #[arg(long, default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")]
    sources: String,
    /// Speak TLS to `localhost`, trusting the CA in this PEM file.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Provision the `lt-N@load.test` accounts in this database first.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

const PASSWORD: &str = "loadtest";

fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

async fn parked(admin: SocketAddr) -> Result<f64> {
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    stream.read_to_string(&mut page).await?;
    Ok(page
        .lines()
        .find_map(|l| l.strip_prefix("dp_frontend_parked_pings "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn provision(url: &str, mailboxes: usize) -> Result<()> {
    let pool = dp_db::lazy_pool(url, 2)?;
    let hash = dp_db::accounts::hash_password(PASSWORD)?;
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
    .await?;
    Ok(())
}

fn request(device: usize, mailboxes: usize, heartbeat: u32) -> Vec<u8> {
    let user = format!("lt-{}@load.test", device % mailboxes);
    let body = PingRequest {
        heartbeat: Some(heartbeat),
        folders: Some(vec![
            PingFolder {
                id: "5".into(),
                class: FolderClass::Email,
            },
            PingFolder {
                id: "2".into(),
                class: FolderClass::Calendar,
            },
        ]),
    }
    .encode()
    .unwrap_or_default();
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}"));
    let mut out = format!(
        "POST /Microsoft-Server-ActiveSync?Cmd=Ping&User={user}&DeviceId=lt{device}&DeviceType=LoadTest HTTP/1.1\r\n\
         Host: loadtest\r\nAuthorization: Basic {credentials}\r\nMS-ASProtocolVersion: 14.1\r\n\
         Content-Type: application/vnd.ms-sync.wbxml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

async fn park(args: ParkArgs) -> Result<()> {
    if let Some(url) = &args.database_url {
        let started = Instant::now();
        provision(url, args.mailboxes).await?;
        println!(
            "provisioned {} accounts in {:?}",
            args.mailboxes,
            started.elapsed()
        );
    }
    let before = rss_bytes(args.pid)?;
    let started = Instant::now();
    let half = args.devices / 2;
    let mut connections = Vec::with_capacity(args.devices);
    let mut errors = 0usize;
    let connect = Connector::new(&args)?;
    // The first half warms everything per-mailbox (credential cache, argon2's scratch memory);
    // the slope from half to full is what one more parked Ping costs.
    errors += connect.run(0..half, &mut connections).await;
    let mid_parked = wait_parked(args.admin, (half - errors) as f64).await?;
    let mid = rss_bytes(args.pid)?;
    errors += connect.run(half..args.devices, &mut connections).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let now_parked = wait_parked(args.admin, (args.devices - errors) as f64).await?;
    let after = rss_bytes(args.pid)?;
    if now_parked < 1.0 {
        bail!(
            "nothing parked; is the frontend at {} ready?",
            args.frontend
        );
    }
    let slope = after.saturating_sub(mid) as f64 / (now_parked - mid_parked).max(1.0);
    let report = serde_json::json!({
        "devices": args.devices,
        "parked": now_parked,
        "connect_errors": errors,
        "connect_rate_per_s": args.devices as f64 / connect_secs,
        "rss_before_bytes": before,
        "rss_half_bytes": mid,
        "rss_after_bytes": after,
        "bytes_per_parked_ping_overall": (after.saturating_sub(before) as f64 / now_parked).round(),
        "bytes_per_parked_ping_slope": slope.round(),
    });
    println!("{report}");
    drop(connections);
    Ok(())
}

/// A device connection of either kind, kept open while parked.
trait Held: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Held for T {}

fn tls_connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// Opens device connections at the configured rate from the configured source addresses.
struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
    frontend: SocketAddr,
    sources: Vec<IpAddr>,
    interval: Duration,
    mailboxes: usize,
    heartbeat: u32,
}

impl Connector {
    fn new(args: &ParkArgs) -> Result<Connector> {
        let sources = args
            .sources
            .split(',')
            .map(|s| s.trim().parse().context("--sources"))
            .collect::<Result<Vec<IpAddr>>>()?;
        Ok(Connector {
            tls: args.tls_ca.as_deref().map(tls_connector).transpose()?,
            frontend: args.frontend,
            sources,
            interval: Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))),
            mailboxes: args.mailboxes,
            heartbeat: args.heartbeat,
        })
    }

    /// Connects `devices` and sends their Pings; returns how many failed.
    async fn run(&self, devices: std::ops::Range<usize>, into: &mut Vec<Box<dyn Held>>) -> usize {
        let mut errors = 0;
        let mut ticker = tokio::time::interval(self.interval);
        for device in devices {
            ticker.tick().await;
            let source = SocketAddr::new(self.sources[device % self.sources.len()], 0);
            let connected = async {
                let socket = TcpSocket::new_v4()?;
                socket.bind(source)?;
                let tcp = socket.connect(self.frontend).await?;
                let mut stream: Box<dyn Held> = match &self.tls {
                    None => Box::new(tcp),
                    Some(tls) => {
                        let name = rustls::pki_types::ServerName::try_from("localhost")
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        Box::new(tls.connect(name, tcp).await?)
                    }
                };
                stream
                    .write_all(&request(device, self.mailboxes, self.heartbeat))
                    .await?;
                stream.flush().await?;
                Ok::<_, std::io::Error>(stream)
            };
            match connected.await {
                Ok(stream) => into.push(stream),
                Err(_) => errors += 1,
            }
        }
        errors
    }
}

/// Waits until the frontend reports `want` parked Pings (or two minutes pass).
async fn wait_parked(admin: SocketAddr, want: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = parked(admin).await?;
        if now >= want || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Park(args) => park(args).await,
        }
    })
}
