//! The devices' TLS client: trusts one CA and speaks to `localhost`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

/// The configuration every device of a worker starts from.
pub fn devices_config(ca: &Path, tls12: bool) -> Result<Arc<rustls::ClientConfig>> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    Ok(Arc::new(client_config(ca, versions)?))
}

/// One device's connector: its own memory of tickets, as each phone has, so a device that
/// comes back resumes with the ticket it was given (a cache shared by thousands of devices
/// would hold only the last few tickets for `localhost`).
pub fn device_connector(config: &rustls::ClientConfig) -> tokio_rustls::TlsConnector {
    let mut own = config.clone();
    own.resumption = rustls::client::Resumption::in_memory_sessions(1);
    tokio_rustls::TlsConnector::from(Arc::new(own))
}

/// A client configuration that trusts the CA in `ca` (PEM) and speaks `versions`.
pub fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
