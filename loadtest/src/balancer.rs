//! HAProxy in front of the local frontends (`--balancer`), to measure where TLS should end in
//! one run: at the pods, behind an L4 balancer that passes each client's address in the PROXY
//! protocol (`tcp`), or at the balancer, in front of plaintext pods (`tls`). Either way the
//! frontends take PROXY v2 headers (PROXY_PROTOCOL), and HAProxy's memory and CPU count with
//! theirs: the figures are per device for the whole path.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::Command;

use crate::cluster::Node;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancer {
    /// Devices connect to the frontends directly.
    None,
    /// HAProxy relays TCP (TLS ends at the frontends), PROXY v2 to them.
    Tcp,
    /// HAProxy ends TLS (needs --tls) and sends plaintext to the frontends, PROXY v2.
    Tls,
}

/// The configuration: one listener for the devices, the frontends as servers, least
/// connections. HAProxy holds two descriptors per device: this machine's 20,000 per process
/// bound it to about 9,900 devices.
fn config(mode: Balancer, listen: SocketAddr, frontends: &[SocketAddr], pem: &Path) -> String {
    let tls = match mode {
        Balancer::Tls => format!(" ssl crt {} alpn http/1.1", pem.display()),
        _ => String::new(),
    };
    let servers: String = frontends
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("  server fe{i} {addr} send-proxy-v2\n"))
        .collect();
    format!(
        "global\n  maxconn 9900\n  ulimit-n 20000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 2h\n  timeout server 2h\n\
         frontend devices\n  bind {listen}{tls}\n  default_backend pods\n\
         backend pods\n  balance leastconn\n{servers}"
    )
}

/// Starts HAProxy (`haproxy` on the PATH; Debian's package) and waits until it listens.
pub async fn start(
    mode: Balancer,
    frontends: &[SocketAddr],
    ca: Option<&dp_testkit::tls::TestCa>,
    logs: &Path,
) -> Result<Node> {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let pem = logs.join("haproxy.pem");
    if mode == Balancer::Tls {
        let ca = ca.context("--balancer tls needs --tls (HAProxy ends the devices' TLS)")?;
        let mut combined = std::fs::read(ca.cert_path())?;
        combined.extend(std::fs::read(ca.key_path())?);
        std::fs::write(&pem, combined)?;
    }
    let file = logs.join("haproxy.cfg");
    std::fs::write(&file, config(mode, listen, frontends, &pem))?;
    let log = std::fs::File::create(logs.join("haproxy.log"))?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    let node = Node::process("haproxy", listen, child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        if Instant::now() > deadline {
            bail!("haproxy did not listen within 20 s; see its log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(node)
}
