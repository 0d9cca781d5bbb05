//! What a device connection runs over: plain TCP, or TLS terminated here (`tls`). The connection code
//! is generic over [`Transport`]; only noticing a client that left while parked differs.

use std::future::Future;

mod records;
mod tls;
mod write_deadline;
pub use tls::TlsStream;
pub use write_deadline::WriteDeadline;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Completes when the client closes the connection, with the error that ended it, if one
    /// did. Bytes it sends meanwhile (a pipelined request) are appended to `buf`; past `max` of
    /// them the connection counts as gone.
    fn closed<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
        max: usize,
    ) -> impl Future<Output = Option<std::io::Error>> + Send + 'a;
}

impl Transport for TcpStream {
    /// Waits for readability without holding a buffer: a parked plaintext Ping keeps none.
    async fn closed(&mut self, buf: &mut Vec<u8>, max: usize) -> Option<std::io::Error> {
        loop {
            if let Err(err) = self.readable().await {
                return Some(err);
            }
            let mut chunk = [0u8; 512];
            match self.try_read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > max {
                        return None;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Some(err),
            }
        }
    }
}
