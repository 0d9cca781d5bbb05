//! A write deadline for device connections (`WRITE_TIMEOUT_SECS`): a client that stops reading
//! (one that pipelines requests and never reads the answers, or a phone gone behind a carrier)
//! must not hold a connection and its task forever. The timer exists only while a write is
//! blocked, so a parked Ping carries a null pointer, not a timer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::Transport;

pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Started when a write first has to wait; dropped once it makes progress.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            blocked: None,
        }
    }

    /// Whether the write in progress has waited past the deadline (starting the clock if it
    /// has only just begun to wait).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client has not read for WRITE_TIMEOUT_SECS",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.blocked = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, poll)
    }
}

impl<S: Transport> Transport for WriteDeadline<S> {
    fn closed<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
        max: usize,
    ) -> impl Future<Output = Option<std::io::Error>> + Send + 'a {
        self.inner.closed(buf, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_never_reads_times_the_writer_out() {
        let (client, _reader) = tokio::io::duplex(1024);
        let mut stream = WriteDeadline::new(client, Duration::from_secs(30));
        let err = stream
            .write_all(&vec![0u8; 64 * 1024])
            .await
            .expect_err("times out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_timed_out() {
        let (client, mut reader) = tokio::io::duplex(1024);
        let mut stream = WriteDeadline::new(client, Duration::from_secs(30));
        let drain = tokio::spawn(async move {
            let mut total = 0;
            let mut piece = [0u8; 1024];
            while total < 64 * 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += reader.read(&mut piece).await.expect("reads");
            }
        });
        stream
            .write_all(&vec![0u8; 64 * 1024])
            .await
            .expect("each piece is read within the deadline");
        drain.await.expect("drained");
    }
}
