//! Ctrl-C and SIGTERM (heard by `dp_runtime::shutdown::received`, as the services hear them)
//! end a run the way its end does: without a handler, the default action kills `loadtest`
//! alone and leaves its frontends, watchers, balancer and workers running (`kill_on_drop` needs
//! the handles to drop).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dp_runtime::shutdown::Signal;
use dp_testkit::processes;

use crate::cluster::{self, ClusterArgs};

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
    // As a shell reports a process the signal ended.
    ExitCode::from(128 + signal.number())
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
