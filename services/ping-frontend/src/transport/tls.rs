//! TLS terminated here. rustls's unbuffered API runs the handshake; then rustls hands over the
//! traffic keys (`records`) and is gone: the connection owns its three buffers (records
//! received, plaintext not yet read, records not yet sent), frees each as soon as it is empty,
//! and seals and opens its records itself. A parked Ping has sent and read everything, so it
//! holds no buffer and no rustls state, only its keys: waiting for the device's next bytes is
//! waiting for the socket's readiness, as in plaintext. (rustls's buffered `ServerConnection`
//! keeps a 4 KiB record buffer and 3.2 KB of connection state for as long as the connection
//! lives: most of the difference between a TLS and a plaintext parked Ping, issue 14.)

use std::io::{Error, ErrorKind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::records::{Opened, Records};
use super::Transport;

/// Past this many received bytes without a complete record (rustls joins handshake messages of
/// up to 64 KiB; records are at most 18 KiB), the peer is not speaking TLS.
const MAX_INCOMING: usize = 80 * 1024;
/// Plaintext encrypted per write: a few records, so a large answer is sent as it is encrypted.
const MAX_WRITE: usize = 64 * 1024;
/// What one socket read takes, from a buffer on the stack.
const READ_CHUNK: usize = 4096;

/// The socket and the records on their way through it.
struct Wire {
    tcp: TcpStream,
    /// Records received and not yet processed (a partial record at most, once processed).
    incoming: Vec<u8>,
    /// Records to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
}

pub struct TlsStream {
    wire: Wire,
    records: Records,
    /// Decrypted bytes the caller has not read yet.
    plaintext: Vec<u8>,
    /// The device sent close_notify, or closed its side of TCP.
    peer_closed: bool,
    close_notify_sent: bool,
    resumed: bool,
}

fn invalid(err: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidData, err.to_string())
}

/// Frees a buffer that holds nothing.
fn release(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

impl Wire {
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
}

/// rustls during the handshake, with the wire it runs on.
struct Handshake {
    conn: UnbufferedServerConnection,
    wire: Wire,
    /// Application data that came with the handshake's last flight.
    plaintext: Vec<u8>,
}

impl Handshake {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let done = self.process()?;
            ready!(self.wire.poll_send(cx))?;
            if done {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.wire.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Processes the records received until rustls needs bytes (false) or the handshake is
    /// done and everything it had to send is queued (true).
    fn process(&mut self) -> std::io::Result<bool> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.wire.incoming);
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
                    let out = &mut self.wire.outgoing;
                    let start = out.len();
                    out.resize(start + 512, 0);
                    let written = loop {
                        match encode.encode(&mut out[start..]) {
                            Ok(n) => break n,
                            Err(EncodeError::InsufficientSize(size)) => {
                                out.resize(start + size.required_size, 0);
                            }
                            Err(err) => return Err(invalid(err)),
                        }
                    };
                    out.truncate(start + written);
                    None
                }
                // Queued in `outgoing`, which goes out before anything written after it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(false),
                // TLS 1.3 lets a server write before the client's Finished: not done yet.
                ConnectionState::WriteTraffic(_) => Some(true),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(ErrorKind::UnexpectedEof.into())
                }
                // Early data is not enabled; anything else is a state this code does not know.
                _ => return Err(invalid("unexpected TLS connection state")),
            };
            self.wire.incoming.drain(..discard);
            match step {
                Some(true) if self.conn.is_handshaking() => return Ok(false),
                Some(done) => return Ok(done),
                None => {}
            }
        }
    }
}

impl TlsStream {
    /// Completes the handshake on `tcp` (the caller bounds how long it may take), then takes
    /// the traffic keys from rustls.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsStream> {
        let mut handshake = Handshake {
            conn: UnbufferedServerConnection::new(config).map_err(invalid)?,
            wire: Wire {
                tcp,
                incoming: Vec::new(),
                outgoing: Vec::new(),
                sent: 0,
            },
            plaintext: Vec::new(),
        };
        std::future::poll_fn(|cx| handshake.poll(cx)).await?;
        let Handshake {
            conn,
            mut wire,
            plaintext,
        } = handshake;
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(invalid)?;
        release(&mut wire.incoming);
        Ok(TlsStream {
            wire,
            records: Records::new(secrets, kernel)?,
            plaintext,
            peer_closed: false,
            close_notify_sent: false,
            resumed,
        })
    }

    /// Whether the device came back with a ticket instead of a full handshake.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Opens the records received; what they ask to send (a KeyUpdate) is queued.
    fn open(&mut self) -> std::io::Result<()> {
        let opened = self.records.open(
            &mut self.wire.incoming,
            &mut self.plaintext,
            &mut self.wire.outgoing,
        )?;
        release(&mut self.wire.incoming);
        if opened == Opened::Closed {
            self.peer_closed = true;
        }
        Ok(())
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
            this.open()?;
            // What opening queued (a key update's answer) goes out when it can; a device that
            // does not read must not stop us reading.
            if let Poll::Ready(Err(err)) = this.wire.poll_send(cx) {
                return Poll::Ready(Err(err));
            }
            if !this.plaintext.is_empty() || this.peer_closed {
                continue;
            }
            if ready!(this.wire.poll_receive(cx))? == 0 {
                this.peer_closed = true;
                if !this.wire.incoming.is_empty() {
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
        // Records already sealed go first: no more is taken while the device is not reading.
        ready!(this.wire.poll_send(cx))?;
        if this.close_notify_sent {
            return Poll::Ready(Err(ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        this.records.seal_data(data, &mut this.wire.outgoing)?;
        // As much as the socket takes now; the rest by the next write, flush or shutdown.
        if let Poll::Ready(Err(err)) = this.wire.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.wire.poll_send(cx))?;
        Pin::new(&mut this.wire.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            ready!(this.wire.poll_send(cx))?;
            this.records.seal_close_notify(&mut this.wire.outgoing)?;
            this.close_notify_sent = true;
        }
        ready!(this.wire.poll_send(cx))?;
        Pin::new(&mut this.wire.tcp).poll_shutdown(cx)
    }
}

impl Transport for TlsStream {
    /// Waits for the socket's readiness, holding no buffer, and decrypts only what comes. (The
    /// chunk lives inside one poll, not across the wait: a parked Ping's future does not carry
    /// it.)
    async fn closed(&mut self, buf: &mut Vec<u8>, max: usize) -> Option<Error> {
        std::future::poll_fn(|cx| loop {
            let mut chunk = [0u8; 512];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *self).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(err)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(read.filled());
                    if buf.len() > max {
                        return Poll::Ready(None);
                    }
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests;
