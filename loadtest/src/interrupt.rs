//! Ctrl-C and SIGTERM end a run the way its end does: without a handler, the default action
//! kills `loadtest` alone and leaves its frontends, watchers, balancer and workers running
//! (`kill_on_drop` needs the handles to drop).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dp_testkit::processes;

use crate::cluster::{self, ClusterArgs};

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

    /// 128 + the signal's number, as a shell reports a process the signal ended.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        })
    }
}

/// Completes when the first of Ctrl-C or SIGTERM arrives. Never completes when neither can be
/// listened for (the run then goes on, as it would have without a handler).
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

/// After the run's future was dropped on `signal` (which sent SIGKILL to every process it had
/// started): clears a local cluster's namespace as a finished run does, unless --keep-state.
pub async fn wind_up(signal: Signal, local: Option<ClusterArgs>) -> ExitCode {
    eprintln!(
        "loadtest: {}: stopped the run and its processes",
        signal.name()
    );
    if let Some(args) = local.filter(|args| !args.keep_state) {
        settle().await;
        if let Err(e) = cluster::clear("after the interrupted run", &args).await {
            eprintln!("loadtest: the local cluster's state stays: {e:#}");
        }
    }
    signal.exit_code()
}

/// Waits (up to five seconds) until the processes this one started have exited: a command
/// one of them had sent before its SIGKILL could otherwise reach Redis after the clear.
async fn settle() {
    let (me, deadline) = (std::process::id(), Instant::now() + Duration::from_secs(5));
    loop {
        let left = processes::children(me);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("loadtest: still running after SIGKILL: {left:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
