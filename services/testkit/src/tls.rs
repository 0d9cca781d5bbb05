//! Certificates for TLS tests: a test CA, server certificates for `localhost` signed by it
//! (written as PEM files a frontend can load), and clients that trust it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SerialNumber};
use rustls::pki_types::CertificateDer;

pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "directpush test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = std::env::temp_dir().join(format!(
            "dp-tls-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("certificate dir");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("writes CA");
        TestCa { cert, key, dir }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes a fresh `localhost` certificate (serial `serial`) and its key to `cert.pem` and
    /// `key.pem` in the CA's directory; returns its DER, to recognise it on the wire.
    pub fn issue(&self, serial: u64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("directpush test {serial}"));
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        // Key first, then the certificate: a reload between the two writes fails the key
        // check and keeps the previous pair, and the next check picks up both.
        write_atomically(&self.dir.join("key.pem"), key.serialize_pem().as_bytes());
        write_atomically(&self.dir.join("cert.pem"), cert.pem().as_bytes());
        cert.der().clone()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The last issued certificate and its key in one PEM file (`both.pem`), as HAProxy's
    /// `crt` takes them.
    pub fn combined_pem(&self) -> std::io::Result<PathBuf> {
        let mut both = std::fs::read(self.cert_path())?;
        both.extend(std::fs::read(self.key_path())?);
        let path = self.dir.join("both.pem");
        std::fs::write(&path, both)?;
        Ok(path)
    }

    /// A client that trusts this CA, offering ALPN http/1.1 and the given TLS versions.
    pub fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("root added");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// Writes through a rename, so a reader (or a reload) never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("writes");
    std::fs::rename(&tmp, path).expect("renames");
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
