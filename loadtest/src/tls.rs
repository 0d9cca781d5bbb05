//! The devices' TLS client: trusts one CA and speaks to `localhost`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

pub fn connector(ca: &Path) -> Result<tokio_rustls::TlsConnector> {
    let config = client_config(ca, rustls::DEFAULT_VERSIONS)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
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
