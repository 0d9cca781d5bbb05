//! A TCP proxy in front of a service, which the test can cut (every connection dropped, new
//! ones refused) and restore: a network partition between one pod and that service. It can
//! also silence its connections, as a carrier drops a mapping: neither end is told, and what
//! either sends is lost; or abandon them, as a phone does on a handover or an app restart:
//! nothing passes, and once the test says so, what the service sent meanwhile is met with a
//! reset (a close with unread data).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Proxied connections still open.
    active: Arc<AtomicUsize>,
    generation: watch::Sender<u64>,
    silenced: watch::Sender<u64>,
    abandoned: watch::Sender<u64>,
    resets: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (silenced, _) = watch::channel(0u64);
        let (abandoned, _) = watch::channel(0u64);
        let (resets, _) = watch::channel(0u64);
        let active = Arc::new(AtomicUsize::new(0));
        let (flag, gen, open) = (cut.clone(), generation.clone(), active.clone());
        let (hush, leave, rst) = (silenced.clone(), abandoned.clone(), resets.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if flag.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let mut cut_signal = gen.subscribe();
                let mut silence_signal = hush.subscribe();
                let mut abandon_signal = leave.subscribe();
                let mut reset_signal = rst.subscribe();
                open.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let mut client = client;
                        // A cut wins over data in flight: nothing passes once it is signalled.
                        let then = tokio::select! {
                            biased;
                            _ = cut_signal.changed() => Then::Close,
                            _ = silence_signal.changed() => Then::Discard,
                            _ = abandon_signal.changed() => Then::Reset,
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => Then::Close,
                        };
                        match then {
                            Then::Close => {}
                            Then::Discard => tokio::select! {
                                _ = cut_signal.changed() => {}
                                () = discard(client, server) => {}
                            },
                            Then::Reset => {
                                tokio::select! {
                                    _ = cut_signal.changed() => {}
                                    _ = reset_signal.changed() => {}
                                }
                                // Unread bytes make the kernel answer this close with a reset.
                                drop((client, server));
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy {
            addr,
            cut,
            active,
            generation,
            silenced,
            abandoned,
            resets,
            task,
        }
    }

    /// Drops every proxied connection and refuses new ones until [`restore`](Self::restore);
    /// returns once every proxied connection is closed, so nothing passes after it.
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
        let active = self.active.clone();
        crate::wait_for(
            "the proxy's connections to close",
            std::time::Duration::from_secs(5),
            || {
                let active = active.clone();
                async move { (active.load(Ordering::SeqCst) == 0).then_some(()) }
            },
        )
        .await;
    }

    /// From now on the open connections pass nothing, and neither end hears of it.
    pub fn silence(&self) {
        self.silenced.send_modify(|g| *g += 1);
    }

    /// From now on the open connections pass nothing, and nobody reads them: as after a
    /// handover or an app restart.
    pub fn abandon(&self) {
        self.abandoned.send_modify(|g| *g += 1);
    }

    /// Closes the abandoned connections: what the service wrote into them unread is met with a
    /// reset, as a phone's kernel answers bytes for a socket nobody holds any more.
    pub fn reset(&self) {
        self.resets.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

enum Then {
    Close,
    Discard,
    Reset,
}

/// Reads and drops what both ends send until both have closed.
async fn discard(mut client: TcpStream, mut server: TcpStream) {
    use tokio::io::AsyncReadExt;
    let (mut a, mut b) = ([0u8; 1024], [0u8; 1024]);
    tokio::join!(
        async { while matches!(client.read(&mut a).await, Ok(n) if n > 0) {} },
        async { while matches!(server.read(&mut b).await, Ok(n) if n > 0) {} },
    );
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}
