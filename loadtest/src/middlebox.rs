//! A carrier's NAT or firewall in miniature: relays TCP, and silently forgets a connection that
//! has been idle longer than its timeout. Neither end is told: both sockets stay open and what
//! either sends is lost, just as when a mobile network drops a mapping. The server may still
//! write a Status 2 into it and believe it delivered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};

pub struct Middlebox {
    pub addr: SocketAddr,
    /// Connections silently dropped so far.
    pub dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Middlebox {
    pub async fn start(upstream: SocketAddr, idle: Duration) -> Result<Middlebox> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, idle, &counter).await;
                    }
                });
            }
        });
        Ok(Middlebox {
            addr,
            dropped,
            task,
        })
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Middlebox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(mut client: TcpStream, server: TcpStream, idle: Duration, dropped: &AtomicU64) {
    let (mut up_read, mut up_write) = server.into_split();
    let (mut a, mut b) = (vec![0u8; 8192], vec![0u8; 8192]);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            read = client.read(&mut a) => match read {
                Ok(n) if n > 0 && up_write.write_all(&a[..n]).await.is_ok() => last = Instant::now(),
                _ => return,
            },
            read = up_read.read(&mut b) => match read {
                Ok(n) if n > 0 && client.write_all(&b[..n]).await.is_ok() => last = Instant::now(),
                _ => return,
            },
            () = sleep_until(last + idle) => break,
        }
    }
    // The mapping is gone: whatever either side sends from now on is lost, until each closes.
    dropped.fetch_add(1, Ordering::Relaxed);
    let (mut client_read, _client_write) = client.split();
    tokio::join!(
        async { while matches!(client_read.read(&mut a).await, Ok(n) if n > 0) {} },
        async { while matches!(up_read.read(&mut b).await, Ok(n) if n > 0) {} },
    );
    drop(up_write);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time: paused time would advance past the idle timeout while real sockets are busy.
    #[tokio::test]
    async fn relays_until_idle_then_goes_quiet() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = server.local_addr().expect("addr");
        let middlebox = Middlebox::start(upstream, Duration::from_secs(1))
            .await
            .expect("start");
        let mut device = TcpStream::connect(middlebox.addr).await.expect("connect");
        let (mut far, _) = server.accept().await.expect("accept");
        device.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.expect("relayed");
        assert_eq!(&got, b"ping");
        // Idle past the timeout: from then on, what the server writes never arrives.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while middlebox.dropped() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not dropped within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        far.write_all(b"Status 2")
            .await
            .expect("the server can still write");
        let quiet = tokio::time::timeout(Duration::from_millis(500), device.read(&mut got)).await;
        assert!(
            quiet.is_err(),
            "the device's side must stay open and silent"
        );
        // The device gives up and closes; the server's side is not told.
        drop(device);
        let told = tokio::time::timeout(Duration::from_millis(300), far.read(&mut got)).await;
        assert!(told.is_err(), "the server must not hear of the drop");
    }
}
