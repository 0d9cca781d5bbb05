//! The device's request body, read in pieces of at most [`PIECE`] bytes and handed on as it
//! arrives: by Content-Length, or de-chunked. Memory per transfer is a piece or two, never the
//! body (SendMail and ItemOperations carry tens of megabytes).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::http::request::Framing;

/// The most bytes read from the device at once.
pub const PIECE: usize = 16 * 1024;

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the device sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the device closed the connection inside the body")]
    Truncated,
    #[error("bad chunked framing: {0}")]
    Framing(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads a request body from the device: `buf` holds what was read past the head.
pub struct BodyReader<'a, S> {
    stream: &'a mut S,
    buf: &'a mut Vec<u8>,
    idle: Duration,
    state: State,
}

enum State {
    Length(u64),
    /// Inside a chunk with this many bytes left; `0` means a size line comes next.
    Chunk(u64),
    Done,
}

impl<'a, S: AsyncRead + Unpin> BodyReader<'a, S> {
    pub fn new(stream: &'a mut S, buf: &'a mut Vec<u8>, framing: Framing, idle: Duration) -> Self {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunk(0),
        };
        BodyReader {
            stream,
            buf,
            idle,
            state,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next piece of the body, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        match self.state {
            State::Done => Ok(None),
            State::Length(left) => {
                let piece = self.take(left).await?;
                let left = left - piece.len() as u64;
                self.state = if left == 0 {
                    State::Done
                } else {
                    State::Length(left)
                };
                Ok(Some(piece))
            }
            State::Chunk(0) => {
                let size = self.chunk_size().await?;
                if size == 0 {
                    // Trailers, if any, end with an empty line; they are not forwarded.
                    while !self.line().await?.is_empty() {}
                    self.state = State::Done;
                    return Ok(None);
                }
                self.state = State::Chunk(size);
                Box::pin(self.next()).await
            }
            State::Chunk(left) => {
                let piece = self.take(left).await?;
                let left = left - piece.len() as u64;
                if left == 0 && !self.line().await?.is_empty() {
                    return Err(BodyError::Framing("no CRLF after a chunk"));
                }
                self.state = State::Chunk(left);
                Ok(Some(piece))
            }
        }
    }

    /// Up to `PIECE` (and at most `left`) bytes: first what `buf` holds, else one read.
    async fn take(&mut self, left: u64) -> Result<Bytes, BodyError> {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(PIECE);
        if !self.buf.is_empty() {
            let n = want.min(self.buf.len());
            let piece = Bytes::copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            return Ok(piece);
        }
        let mut piece = vec![0; want];
        let n = tokio::time::timeout(self.idle, self.stream.read(&mut piece))
            .await
            .map_err(|_| BodyError::Idle(self.idle))??;
        if n == 0 {
            return Err(BodyError::Truncated);
        }
        piece.truncate(n);
        Ok(Bytes::from(piece))
    }

    /// One CRLF-terminated line, without its CRLF.
    async fn line(&mut self) -> Result<Vec<u8>, BodyError> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(BodyError::Framing("line too long"));
            }
            self.buf.reserve(256);
            let n = tokio::time::timeout(self.idle, self.stream.read_buf(self.buf))
                .await
                .map_err(|_| BodyError::Idle(self.idle))??;
            if n == 0 {
                return Err(BodyError::Truncated);
            }
        }
    }

    async fn chunk_size(&mut self) -> Result<u64, BodyError> {
        let line = self.line().await?;
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let digits = std::str::from_utf8(digits)
            .map_err(|_| BodyError::Framing("chunk size is not hex"))?
            .trim();
        if digits.is_empty() || digits.len() > 15 {
            return Err(BodyError::Framing("chunk size is not hex"));
        }
        u64::from_str_radix(digits, 16).map_err(|_| BodyError::Framing("chunk size is not hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(wire: &[u8], framing: Framing) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        // The first 5 bytes arrive with the head; the rest from the connection.
        let split = wire.len().min(5);
        let mut buf = wire[..split].to_vec();
        let mut stream = &wire[split..];
        let mut reader = BodyReader::new(&mut stream, &mut buf, framing, Duration::from_secs(1));
        let mut body = Vec::new();
        while let Some(piece) = reader.next().await? {
            assert!(piece.len() <= PIECE);
            body.extend_from_slice(&piece);
        }
        let mut rest = buf;
        rest.extend_from_slice(stream);
        Ok((body, rest))
    }

    #[tokio::test]
    async fn reads_by_length_and_by_chunks_leaving_the_next_request() {
        let big = vec![b'x'; 40_000];
        let mut wire = big.clone();
        wire.extend_from_slice(b"NEXT");
        let (body, rest) = read_all(&wire, Framing::Length(40_000))
            .await
            .expect("body");
        assert_eq!((body, rest), (big, b"NEXT".to_vec()));

        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (body, rest) = read_all(chunked, Framing::Chunked).await.expect("body");
        assert_eq!((body, rest), (b"hello world".to_vec(), b"NEXT".to_vec()));
    }

    #[tokio::test]
    async fn bad_framing_and_short_bodies_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(matches!(
                read_all(bad, Framing::Chunked).await,
                Err(BodyError::Framing(_))
            ));
        }
        assert!(matches!(
            read_all(b"short", Framing::Length(10)).await,
            Err(BodyError::Truncated)
        ));
    }
}
