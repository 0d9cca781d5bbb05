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
    let sources: Vec<IpAddr> = args
        .sources
        .split(',')
        .map(|s| s.trim().parse().context("--sources"))
        .collect::<Result<_>>()?;
    let before = rss_bytes(args.pid)?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let started = Instant::now();
    let mut connections = Vec::with_capacity(args.devices);
    let mut errors = 0usize;
    let mut ticker = tokio::time::interval(interval);
    for device in 0..args.devices {
        ticker.tick().await;
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(sources[device % sources.len()], 0))?;
        match socket.connect(args.frontend).await {
            Ok(mut stream) => {
                if stream
                    .write_all(&request(device, args.mailboxes, args.heartbeat))
                    .await
                    .is_err()
                {
                    errors += 1;
                }
                connections.push(stream);
            }
            Err(_) => errors += 1,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let want = (args.devices - errors) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut now_parked = parked(args.admin).await?;
    while now_parked < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now_parked = parked(args.admin).await?;
    }
    let after = rss_bytes(args.pid)?;
    if now_parked < 1.0 {
        bail!(
            "nothing parked; is the frontend at {} ready?",
            args.frontend
        );
    }
    let per = (after.saturating_sub(before)) as f64 / now_parked;
    let report = serde_json::json!({
        "devices": args.devices,
        "parked": now_parked,
        "connect_errors": errors,
        "connect_rate_per_s": args.devices as f64 / connect_secs,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_parked_ping": per.round(),
    });
    println!("{report}");
    drop(connections);
    Ok(())
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
