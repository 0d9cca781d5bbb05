//! TLS termination with rustls: TLS 1.2 and 1.3, ALPN http/1.1, and a certificate (and the
//! shared ticket keys, if any) replaced without a restart when their files change or on SIGHUP.

pub mod tickets;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `TLS_TICKET_KEYS`: session ticket keys shared by every pod (see `tickets`).
    pub ticket_keys: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_every: Duration,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key into a signing identity.
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{}: {e}", files.key.display()))?
        .ok_or_else(|| format!("{}: no private key in it", files.key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(certified)
}

/// Hands every handshake the certificate loaded last.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    resolver: Arc<Resolver>,
    /// `Some` when the ticket keys come from `files.ticket_keys`.
    shared_tickets: Option<Arc<tickets::SharedTicketer>>,
    files: TlsFiles,
}

impl Tls {
    pub fn new(files: TlsFiles) -> Result<Tls, String> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(load(&files)?)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // After the handshake the connection runs the record layer itself
        // (`transport/records.rs`) with the traffic keys rustls hands over.
        config.enable_secret_extraction = true;
        // Returning devices resume with a ticket, sparing the certificate signature: stateless
        // tickets, so nothing is stored per device. Under the operator's shared keys a device
        // resumes on any pod; without them, under this pod's own keys (rotated every 6 hours,
        // gone with the process), only on the pod that saw it last. One ticket per handshake:
        // a phone uses one per reconnect, and each resumption hands out the next.
        let shared_tickets = match &files.ticket_keys {
            Some(path) => Some(Arc::new(tickets::SharedTicketer::new(
                tickets::TicketKeys::read(path)?,
            ))),
            None => None,
        };
        config.ticketer = match &shared_tickets {
            Some(shared) => shared.clone(),
            None => rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?,
        };
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 1;
        Ok(Tls {
            config: Arc::new(config),
            resolver,
            shared_tickets,
            files,
        })
    }

    /// Loads the files again; on any failure nothing changes (a certificate is not swapped
    /// without the ticket keys read with it, or the other way round).
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(load(&self.files)?);
        let keys = match (&self.shared_tickets, &self.files.ticket_keys) {
            (Some(_), Some(path)) => Some(tickets::TicketKeys::read(path)?),
            _ => None,
        };
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
        if let (Some(shared), Some(keys)) = (&self.shared_tickets, keys) {
            tracing::info!(sealing_key = %keys.current_id(), "TLS ticket keys reloaded");
            shared.replace(keys);
        }
        Ok(())
    }

    fn stamp(&self) -> Option<Vec<SystemTime>> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let files = [Some(&self.files.cert), Some(&self.files.key)];
        files
            .into_iter()
            .chain([self.files.ticket_keys.as_ref()])
            .flatten()
            .map(|p| modified(p))
            .collect()
    }

    /// Reloads when the files change (checked every `reload_every`) or on SIGHUP, counting
    /// each attempt in `reloads`.
    pub fn watch(
        self: Arc<Self>,
        reloads: prometheus_client::metrics::family::Family<
            crate::metrics::ResultLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    ) {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut seen = self.stamp();
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => {
                            signal.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<()>();
                let forced = tokio::select! {
                    _ = tokio::time::sleep(self.files.reload_every) => false,
                    _ = hup => true,
                };
                let now = self.stamp();
                if !forced && now == seen {
                    continue;
                }
                seen = now;
                let result = match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        "ok"
                    }
                    Err(reason) => {
                        tracing::error!(%reason, "TLS certificate not reloaded; keeping the previous one");
                        "error"
                    }
                };
                reloads
                    .get_or_create(&crate::metrics::ResultLabels { result })
                    .inc();
            }
        });
    }
}
