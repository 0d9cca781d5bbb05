//! HAProxy (Debian's package, `haproxy` on the PATH) in front of frontends, as operators run it:
//! the load test's `--balancer` and the tests of what a balancer does to a device's connection.
//! Every connection to a frontend starts with a PROXY v2 header (the frontends need
//! PROXY_PROTOCOL), and HAProxy picks the frontend with the fewest connections.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// What HAProxy does with a device's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Relays each connection as it is (after TLS, if it ends TLS): a device's close reaches the
    /// frontend as a close, its reset (nearly always) as a reset.
    Tcp,
    /// Ends HTTP: requests of one device connection may go to different frontends, over
    /// connections HAProxy keeps and closes on its own schedule.
    Http,
}

pub struct Plan<'a> {
    pub mode: Mode,
    /// A PEM file holding the certificate and its key: HAProxy ends TLS.
    pub tls: Option<&'a Path>,
    pub frontends: &'a [SocketAddr],
    /// Connections HAProxy takes at most. It holds two descriptors per device: this machine's
    /// 20,000 per process bound it to about 9,900.
    pub maxconn: u32,
}

/// The configuration, listening on `listen`.
pub fn config(plan: &Plan<'_>, listen: SocketAddr) -> String {
    let tls = match plan.tls {
        Some(pem) => format!(" ssl crt {} alpn http/1.1", pem.display()),
        None => String::new(),
    };
    let mode = match plan.mode {
        Mode::Tcp => "mode tcp",
        Mode::Http => "mode http\n  option http-keep-alive\n  timeout http-keep-alive 120s",
    };
    let servers: String = plan
        .frontends
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("  server fe{i} {addr} send-proxy-v2\n"))
        .collect();
    format!(
        "global\n  maxconn {maxconn}\n  ulimit-n 20000\n\
         defaults\n  {mode}\n  timeout connect 5s\n  timeout client 2h\n  timeout server 2h\n\
         frontend devices\n  bind {listen}{tls}\n  default_backend pods\n\
         backend pods\n  balance leastconn\n{servers}",
        maxconn = plan.maxconn,
    )
}

pub struct Haproxy {
    /// Where devices connect.
    pub addr: SocketAddr,
    pub child: Child,
}

/// Starts HAProxy with its configuration and log in `dir`, and waits until it listens.
pub async fn start(plan: &Plan<'_>, dir: &Path) -> Result<Haproxy> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config(plan, addr))?;
    let log = std::fs::File::create(dir.join("haproxy.log"))?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "haproxy did not listen within 20 s; see {}",
                dir.join("haproxy.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Haproxy { addr, child })
}
