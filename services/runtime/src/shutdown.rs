//! One drain signal, passed explicitly to every server and connection: when it fires, listeners
//! stop accepting and parked requests are answered.

use tokio::sync::watch;

/// The sending side, held by whoever decides to stop (signal handler, test).
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// The receiving side; cheap to clone into every task.
#[derive(Clone, Debug)]
pub struct Drain {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> (Shutdown, Drain) {
        let (tx, rx) = watch::channel(false);
        (Shutdown { tx }, Drain { rx })
    }

    pub fn signal(&self) {
        self.tx.send_replace(true);
    }
}

impl Drain {
    /// Completes once shutdown has been signalled (at once if it already was), or when the
    /// sender is gone, which also means nobody will run this process any longer.
    pub async fn signalled(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    pub fn is_signalled(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Fires the shutdown on SIGTERM or Ctrl-C.
pub fn on_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received; draining");
        shutdown.signal();
    });
}
