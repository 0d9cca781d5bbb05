//! HAProxy in front of the local frontends (`--balancer`), to measure where TLS should end in
//! one run: at the pods, behind an L4 balancer that passes each client's address in the PROXY
//! protocol (`tcp`), or at the balancer, in front of plaintext pods (`tls`). Either way the
//! frontends take PROXY v2 headers (PROXY_PROTOCOL), and HAProxy's memory and CPU count with
//! theirs: the figures are per device for the whole path.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use dp_testkit::haproxy;

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

/// Starts HAProxy (`haproxy` on the PATH; Debian's package) and waits until it listens.
pub async fn start(
    mode: Balancer,
    frontends: &[SocketAddr],
    ca: Option<&dp_testkit::tls::TestCa>,
    logs: &Path,
) -> Result<Node> {
    let pem = match mode {
        Balancer::Tls => Some(
            ca.context("--balancer tls needs --tls (HAProxy ends the devices' TLS)")?
                .combined_pem()?,
        ),
        _ => None,
    };
    let plan = haproxy::Plan {
        mode: haproxy::Mode::Tcp,
        tls: pem.as_deref(),
        frontends,
        maxconn: 9900,
    };
    let started = haproxy::start(&plan, logs).await?;
    Ok(Node::process("haproxy", started.addr, started.child))
}
