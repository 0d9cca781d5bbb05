//! One IMAP connection: connect (plain or TLS), log in as a mailbox through the master user,
//! send commands and read responses with their literals.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::parse::{self, Token, Untagged};
use super::Server;

/// Longest response line or literal accepted: a server that sends more is broken or hostile.
const MAX_RESPONSE: usize = 1 << 20;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Client {
    stream: Box<dyn Stream>,
    /// Bytes read but not yet a whole response: [`Client::read`] is cancel-safe, so a
    /// keepalive timer may interrupt it.
    buf: Vec<u8>,
    tag: u32,
    pub capabilities: Vec<String>,
}

impl Client {
    /// Connects and logs in as `mailbox` with the master user's credentials.
    pub async fn login(
        server: &Server,
        mailbox: &str,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&server.address))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {}", server.address))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &server.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(server.host.clone())
                    .context("IMAP host name")?;
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                Box::new(
                    tokio::time::timeout(timeout, connector.connect(name, tcp))
                        .await
                        .context("TLS handshake timed out")?
                        .context("TLS handshake")?,
                )
            }
            None => Box::new(tcp),
        };
        let mut client = Client {
            stream,
            buf: Vec::new(),
            tag: 0,
            capabilities: Vec::new(),
        };
        let greeting = tokio::time::timeout(timeout, client.read())
            .await
            .context("no greeting")??;
        let greeted = match parse::untagged(&greeting) {
            Untagged::Bye => bail!("the server said BYE at once"),
            Untagged::Capability(c) => c,
            _ => Vec::new(),
        };
        client.capabilities = greeted;
        tokio::time::timeout(timeout, client.authenticate(server, mailbox))
            .await
            .context("login timed out")?
            .with_context(|| format!("logging in as {mailbox}"))?;
        let mut capabilities = Vec::new();
        for response in tokio::time::timeout(timeout, client.command("CAPABILITY"))
            .await
            .context("CAPABILITY timed out")??
        {
            if let Untagged::Capability(c) = parse::untagged(&response) {
                capabilities = c;
            }
        }
        client.capabilities = capabilities;
        Ok(client)
    }

    async fn authenticate(&mut self, server: &Server, mailbox: &str) -> anyhow::Result<()> {
        if let Some(sep) = &server.master_separator {
            // `user*master` with the master's password (Dovecot's classic form).
            let login = format!(
                "LOGIN {} {}",
                parse::quote(&format!("{mailbox}{sep}{}", server.master_user)),
                parse::quote(&server.master_password)
            );
            return self.command_quiet(&login).await;
        }
        // SASL PLAIN with an authorization identity (RFC 4616): the standard way.
        let raw = format!(
            "{mailbox}\0{}\0{}",
            server.master_user, server.master_password
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        if self.has("SASL-IR") {
            return self
                .command_quiet(&format!("AUTHENTICATE PLAIN {encoded}"))
                .await;
        }
        let tag = self.send("AUTHENTICATE PLAIN").await?;
        let go = self.read().await?;
        if go.first() != Some(&Token::Atom("+".into())) {
            bail!("AUTHENTICATE PLAIN refused");
        }
        self.send_raw(&encoded).await?;
        self.finish(&tag, "login").await.map(|_| ())
    }

    pub fn has(&self, capability: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(capability))
    }

    /// Reads one response, its literals inline. Cancel-safe: what was read stays buffered.
    pub async fn read(&mut self) -> anyhow::Result<Vec<Token>> {
        loop {
            if let Some(response) = self.take_response() {
                return Ok(response);
            }
            if self.buf.len() > MAX_RESPONSE {
                bail!("a response over {MAX_RESPONSE} bytes");
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The first whole response in the buffer, if there is one, removed from it.
    fn take_response(&mut self) -> Option<Vec<Token>> {
        let mut tokens = Vec::new();
        let mut at = 0;
        loop {
            let end = at + self.buf[at..].iter().position(|&b| b == b'\n')?;
            let line = &self.buf[at..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match parse::literal_size(line) {
                Some(size) => {
                    if self.buf.len() < end + 1 + size {
                        return None;
                    }
                    let open = line.iter().rposition(|&b| b == b'{').unwrap_or(line.len());
                    parse::tokenise(&line[..open], &mut tokens);
                    tokens.push(Token::Str(self.buf[end + 1..end + 1 + size].to_vec()));
                    at = end + 1 + size;
                }
                None => {
                    parse::tokenise(line, &mut tokens);
                    self.buf.drain(..end + 1);
                    return Some(tokens);
                }
            }
        }
    }

    pub async fn send(&mut self, line: &str) -> anyhow::Result<String> {
        self.tag += 1;
        let tag = format!("w{}", self.tag);
        self.stream
            .write_all(format!("{tag} {line}\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        Ok(tag)
    }

    /// Sends a raw line without a tag (`DONE` ends an IDLE).
    pub async fn send_raw(&mut self, line: &str) -> anyhow::Result<()> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Runs a command to its tagged OK; returns the untagged responses on the way.
    pub async fn command(&mut self, line: &str) -> anyhow::Result<Vec<Vec<Token>>> {
        let tag = self.send(line).await?;
        self.finish(&tag, line).await
    }

    /// As [`Client::command`], without naming the command in errors (it holds a password).
    async fn command_quiet(&mut self, line: &str) -> anyhow::Result<()> {
        let tag = self.send(line).await?;
        self.finish(&tag, "login").await.map(|_| ())
    }

    pub async fn finish(&mut self, tag: &str, what: &str) -> anyhow::Result<Vec<Vec<Token>>> {
        let mut untagged = Vec::new();
        loop {
            let response = self.read().await?;
            match parse::tagged(&response, tag) {
                Some(Ok(())) => return Ok(untagged),
                Some(Err(text)) => {
                    let verb = what.split(' ').next().unwrap_or(what);
                    bail!("{verb} refused: {text}")
                }
                None => untagged.push(response),
            }
        }
    }
}

/// The TLS settings for `imaps://`: the system's roots, or `IMAP_CA`'s certificates.
pub fn tls_config(ca: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.context("a certificate in IMAP_CA")?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        bail!("no trusted certificates to check the IMAP server with");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
