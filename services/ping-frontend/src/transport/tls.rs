//! TLS terminated here, over rustls's unbuffered API: the connection owns its three buffers
//! (records received, plaintext not yet read, records not yet sent) and frees each as soon as
//! it is empty. A parked Ping has sent and read everything, so it holds none: waiting for the
//! device's next bytes is waiting for the socket's readiness, as in plaintext. (rustls's
//! buffered `ServerConnection` keeps a 4 KiB record buffer per connection for as long as the
//! connection lives: most of the difference between a TLS and a plaintext parked Ping, issue
//! 14.)

use std::io::{Error, ErrorKind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Transport;

/// Past this many received bytes without a complete record (rustls joins handshake messages of
/// up to 64 KiB; records are at most 16 KiB and change), the peer is not speaking TLS.
const MAX_INCOMING: usize = 80 * 1024;
/// Plaintext encrypted per write: a few records, so a large answer is sent as it is encrypted.
const MAX_WRITE: usize = 64 * 1024;
/// What one socket read takes, from a buffer on the stack.
const READ_CHUNK: usize = 4096;

pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Records received and not yet processed (a partial record at most, once processed).
    incoming: Vec<u8>,
    /// Decrypted bytes the caller has not read yet.
    plaintext: Vec<u8>,
    /// Records to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The device sent close_notify, or closed its side of TCP.
    peer_closed: bool,
    close_notify_sent: bool,
}

/// What processing the received records came to.
enum Step {
    /// More bytes are needed from the device (the handshake waits for them).
    NeedsBytes,
    /// Application data may be sent; more may be received.
    Traffic,
}

/// What to do once the connection can send application data.
enum Then<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

fn invalid(err: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidData, err.to_string())
}

/// Runs `fill` on the free end of `out`, growing it to the size `fill` asks for when too small.
fn append(
    out: &mut Vec<u8>,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
    guess: usize,
) -> std::io::Result<()> {
    let start = out.len();
    out.resize(start + guess, 0);
    loop {
        match fill(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) if required > out.len() - start => {
                out.resize(start + required, 0);
            }
            Err(_) => {
                out.truncate(start);
                return Err(invalid("TLS record could not be encoded"));
            }
        }
    }
}

fn encrypt_size(error: EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

fn encode_size(error: EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

/// Frees a buffer that holds nothing.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

impl TlsStream {
    /// Completes the handshake on `tcp` (the caller bounds how long it may take).
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsStream> {
        let mut stream = TlsStream {
            tcp,
            conn: UnbufferedServerConnection::new(config).map_err(invalid)?,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            close_notify_sent: false,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// Whether the device came back with a ticket instead of a full handshake.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let step = self.process(Then::Nothing)?;
            ready!(self.poll_send(cx))?;
            if matches!(step, Step::Traffic) && !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed || ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Processes the records received until rustls needs bytes or may send application data;
    /// then does `then`. Decrypted data goes to `plaintext`, records to send to `outgoing`.
    fn process(&mut self, mut then: Then<'_>) -> std::io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let step = match state.map_err(invalid)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(
                        &mut self.outgoing,
                        |out| encode.encode(out).map_err(encode_size),
                        512,
                    )?;
                    None
                }
                // Queued in `outgoing`, which goes out before anything written after it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Step::NeedsBytes),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Step::Traffic)
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut then, Then::Nothing) {
                        Then::Nothing => {}
                        Then::Encrypt(data) => {
                            let guess = data.len() + 64 + data.len() / 16;
                            append(
                                &mut self.outgoing,
                                |out| traffic.encrypt(data, out).map_err(encrypt_size),
                                guess,
                            )?;
                        }
                        Then::CloseNotify => {
                            append(
                                &mut self.outgoing,
                                |out| traffic.queue_close_notify(out).map_err(encrypt_size),
                                64,
                            )?;
                            self.close_notify_sent = true;
                        }
                    }
                    Some(Step::Traffic)
                }
                // Early data is not enabled; anything else is a state this code does not know.
                _ => return Err(invalid("unexpected TLS connection state")),
            };
            self.incoming.drain(..discard);
            if let Some(step) = step {
                release(&mut self.incoming);
                return Ok(step);
            }
        }
    }

    /// Reads what the socket has into `incoming` (0: the device closed TCP). Holds no buffer
    /// while it waits.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.incoming.len() > MAX_INCOMING {
            return Poll::Ready(Err(invalid("TLS record too large")));
        }
        loop {
            let mut chunk = [0u8; READ_CHUNK];
            match self.tcp.try_read(&mut chunk) {
                Ok(n) => {
                    self.incoming.extend_from_slice(&chunk[..n]);
                    return Poll::Ready(Ok(n));
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_read_ready(cx))?;
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Writes `outgoing` to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing.clear();
        self.sent = 0;
        release(&mut self.outgoing);
        Poll::Ready(Ok(()))
    }

    /// Moves up to `buf`'s room of plaintext into it.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.plaintext.len().min(buf.remaining());
        buf.put_slice(&self.plaintext[..n]);
        self.plaintext.drain(..n);
        release(&mut self.plaintext);
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plaintext.is_empty() {
                this.take_plaintext(buf);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            this.process(Then::Nothing)?;
            // What processing queued (a key update's answer, an alert) goes out when it can;
            // a device that does not read must not stop us reading.
            if let Poll::Ready(Err(err)) = this.poll_send(cx) {
                return Poll::Ready(Err(err));
            }
            if !this.plaintext.is_empty() || this.peer_closed {
                continue;
            }
            if ready!(this.poll_receive(cx))? == 0 {
                this.peer_closed = true;
                if !this.incoming.is_empty() {
                    return Poll::Ready(Err(ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // Records already encrypted go first: no more is taken while the device is not reading.
        ready!(this.poll_send(cx))?;
        if this.close_notify_sent {
            return Poll::Ready(Err(ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        match this.process(Then::Encrypt(data))? {
            Step::Traffic => {}
            Step::NeedsBytes => return Poll::Ready(Err(invalid("TLS handshake not complete"))),
        }
        // As much as the socket takes now; the rest by the next write, flush or shutdown.
        if let Poll::Ready(Err(err)) = this.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            ready!(this.poll_send(cx))?;
            this.process(Then::CloseNotify)?;
            this.close_notify_sent = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl Transport for TlsStream {
    /// Waits for the socket's readiness, holding no buffer, and decrypts only what comes. (The
    /// chunk lives inside one poll, not across the wait: a parked Ping's future does not carry
    /// it.)
    async fn closed(&mut self, buf: &mut Vec<u8>, max: usize) {
        std::future::poll_fn(|cx| loop {
            let mut chunk = [0u8; 512];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *self).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(read.filled());
                    if buf.len() > max {
                        return Poll::Ready(());
                    }
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server config for `localhost` and a client that trusts it, speaking `version`.
    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            Arc::new(server),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    /// A handshake over real sockets: our server side, rustls's buffered client side.
    async fn pair(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let (server, connector) = configs(version);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsStream::accept(tcp, server)
                .await
                .expect("server handshake")
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let client = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        (accepted.await.expect("server task"), client)
    }

    fn held(stream: &TlsStream) -> usize {
        stream.incoming.capacity() + stream.plaintext.capacity() + stream.outgoing.capacity()
    }

    #[tokio::test]
    async fn an_exchange_leaves_no_buffer_held_in_either_version() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = pair(version).await;
            assert_eq!(held(&server), 0, "after the handshake ({version:?})");
            client
                .write_all(b"POST /ping HTTP/1.1\r\n\r\n")
                .await
                .expect("send");
            let mut request = [0u8; 23];
            server.read_exact(&mut request).await.expect("read");
            assert_eq!(&request, b"POST /ping HTTP/1.1\r\n\r\n");
            server
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
                .await
                .expect("answer");
            server.flush().await.expect("flush");
            let mut answer = [0u8; 19];
            client.read_exact(&mut answer).await.expect("client read");
            assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n\r\n");
            assert_eq!(held(&server), 0, "parked after an exchange ({version:?})");
        }
    }

    #[tokio::test]
    async fn large_bodies_cross_both_ways_intact() {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("client sends");
            client.flush().await.expect("client flush");
            let mut back = vec![0u8; sent.len()];
            client.read_exact(&mut back).await.expect("client reads");
            back
        });
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).await.expect("server reads");
        assert!(got == big, "the server read what the client sent");
        server.write_all(&got).await.expect("server sends");
        server.flush().await.expect("server flush");
        assert!(writer.await.expect("client task") == big, "and back");
    }

    #[tokio::test]
    async fn close_notify_ends_reading_and_shutdown_sends_one() {
        let (mut server, mut client) = pair(&rustls::version::TLS13).await;
        client.shutdown().await.expect("client close_notify");
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.expect("clean end"), 0);
        server.shutdown().await.expect("server close_notify");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("a clean close, not a truncation");
        assert!(rest.is_empty());
        assert!(
            server.write_all(b"late").await.is_err(),
            "nothing after close"
        );
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_fail_the_handshake() {
        let (server, _) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let err = match TlsStream::accept(accepted, server).await {
            Ok(_) => panic!("plaintext HTTP was taken for TLS"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        drop(tcp);
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_handshake_is_an_end_not_a_hang() {
        let (server, _) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        drop(tcp);
        let err = match TlsStream::accept(accepted, server).await {
            Ok(_) => panic!("no handshake happened"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    }
}
