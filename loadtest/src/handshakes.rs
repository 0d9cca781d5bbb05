//! `handshakes`: what a TLS set-up costs a frontend, full and resumed with a ticket, with the
//! frontend's own TLS settings (`ping_frontend::tls`): in process, over no socket, the server
//! side alone timed on one thread. The `park --tls` scenario measures whole set-ups (TCP, TLS,
//! the Ping's claim); this isolates what resumption saves of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use serde_json::json;

#[derive(clap::Args, Clone, Debug)]
pub struct HandshakeArgs {
    /// Seconds of server time to spend on each kind.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Tickets under a TLS_TICKET_KEYS file, as pods that share keys seal them.
    #[arg(long)]
    pub shared_ticket_keys: bool,
}

pub fn run(args: HandshakeArgs) -> Result<serde_json::Value> {
    let ca = dp_testkit::tls::TestCa::new();
    ca.issue(1);
    let tls = ping_frontend::tls::Tls::new(ping_frontend::tls::TlsFiles {
        cert: ca.cert_path(),
        key: ca.key_path(),
        ticket_keys: if args.shared_ticket_keys {
            Some(crate::cluster::ticket_keys(&ca)?)
        } else {
            None
        },
        reload_every: Duration::from_secs(3600),
    })
    .map_err(anyhow::Error::msg)?;
    let mut report = serde_json::Map::new();
    for (name, version) in [
        ("tls13", &rustls::version::TLS13),
        ("tls12", &rustls::version::TLS12),
    ] {
        let budget = Duration::from_secs_f64(args.secs);
        let full = client(&ca, version, Resumption::disabled())?;
        let (full_rate, _) = measure(&tls.config, &full, budget)?;
        let returning = client(&ca, version, Resumption::in_memory_sessions(16))?;
        let (resumed_rate, resumed_share) = measure(&tls.config, &returning, budget)?;
        let line = json!({
            "full_per_server_cpu_sec": full_rate.round(),
            "resumed_per_server_cpu_sec": resumed_rate.round(),
            "resumed_share": (resumed_share * 1000.0).round() / 1000.0,
        });
        println!("{name:>8}: {line}");
        report.insert(name.into(), line);
    }
    Ok(report.into())
}

fn client(
    ca: &dp_testkit::tls::TestCa,
    version: &'static rustls::SupportedProtocolVersion,
    resumption: Resumption,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut config = crate::tls::client_config(&ca.ca_pem(), &[version])?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = resumption;
    Ok(Arc::new(config))
}

/// Handshakes until the server side has spent `budget`: handshakes per server-second, and the
/// share that resumed a session.
fn measure(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    budget: Duration,
) -> Result<(f64, f64)> {
    // One untimed first handshake: a returning device has a ticket from an earlier one.
    handshake(server, client)?;
    let (mut spent, mut count, mut resumed) = (Duration::ZERO, 0u32, 0u32);
    while spent < budget {
        let (server_time, was_resumed) = handshake(server, client)?;
        spent += server_time;
        count += 1;
        resumed += u32::from(was_resumed);
    }
    Ok((
        f64::from(count) / spent.as_secs_f64(),
        f64::from(resumed) / f64::from(count),
    ))
}

/// One handshake, in memory; the server's time, and whether it resumed.
fn handshake(
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
) -> Result<(Duration, bool)> {
    let name = ServerName::try_from("localhost")?;
    let mut client = rustls::ClientConnection::new(client_config.clone(), name)?;
    let started = Instant::now();
    let mut server = UnbufferedServerConnection::new(server_config.clone())?;
    let mut spent = started.elapsed();
    let mut incoming = Vec::new();
    for _ in 0..16 {
        while client.wants_write() {
            client.write_tls(&mut incoming)?;
        }
        let started = Instant::now();
        let outgoing = serve(&mut server, &mut incoming)?;
        spent += started.elapsed();
        if !outgoing.is_empty() {
            client.read_tls(&mut outgoing.as_slice())?;
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            let resumed = server.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            return Ok((spent, resumed));
        }
    }
    bail!("the handshake did not complete")
}

/// Processes what the client sent; returns what the server sends back.
fn serve(server: &mut UnbufferedServerConnection, incoming: &mut Vec<u8>) -> Result<Vec<u8>> {
    let mut outgoing = Vec::new();
    loop {
        let status = server.process_tls_records(incoming);
        let discard = status.discard;
        let done = match status.state.context("server handshake")? {
            ConnectionState::EncodeTlsData(mut encode) => {
                let mut buf = vec![0u8; 16 * 1024];
                let n = encode
                    .encode(&mut buf)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                outgoing.extend_from_slice(&buf[..n]);
                false
            }
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                false
            }
            _ => true,
        };
        incoming.drain(..discard);
        if done {
            return Ok(outgoing);
        }
    }
}
