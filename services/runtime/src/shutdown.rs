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

/// The signals that stop a process of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The signal's number (a shell reports a process it ended with 128 + this).
    pub fn number(self) -> u8 {
        match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
        }
    }
}

/// Completes when the first of Ctrl-C or SIGTERM arrives. Never completes for a signal that
/// cannot be listened for (the process then ends as it would have without a handler).
pub async fn received() -> Signal {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Interrupt,
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = async {
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                    Signal::Terminate
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = ctrl_c => signal,
            signal = terminate => signal,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await
}

/// Fires the shutdown on SIGTERM or Ctrl-C.
pub fn on_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        let signal = received().await;
        tracing::info!(signal = signal.name(), "shutdown signal received; draining");
        shutdown.signal();
    });
}
