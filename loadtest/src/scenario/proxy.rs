//! `proxy`: the frontends in front of a stand-in ActiveSync server (in this process). Devices
//! enrol through the proxy (FolderSync, Sync), park, and sync what each Status 2 reports, as
//! phones do; changes arrive as in `wake`. Reports parked devices, memory, wake latency and
//! misses, the Syncs that acknowledged wakes, and that no Ping reached the upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use dp_proto::sync::{scan, Sync};
use dp_testkit::upstream::{folder_sync_answer, sync_answer, Answer, Received, Upstream};

use crate::report::Report;
use crate::run::Run;
use crate::scenario::wake::WakeArgs;

#[derive(Default)]
struct Counts {
    folder_syncs: AtomicU64,
    syncs: AtomicU64,
    pings: AtomicU64,
}

/// FolderSync: the folders the devices ping. Sync: Status 1 and a new key for each requested
/// collection (nothing to deliver: the scenario measures the Ping tier, not mail transfer).
fn answer(request: &Received, counts: &Counts) -> Answer {
    match request.command() {
        Some("FolderSync") => {
            counts.folder_syncs.fetch_add(1, Ordering::Relaxed);
            Answer::wbxml(folder_sync_answer("1", &[("5", "2"), ("2", "12")]))
        }
        Some("Sync") => {
            let n = counts.syncs.fetch_add(1, Ordering::Relaxed);
            let (asked, _): (Sync, bool) = scan(&request.body);
            let key = format!("k{n}");
            let done: Vec<(&str, &str)> = asked
                .collections
                .iter()
                .map(|c| (c.id.as_str(), key.as_str()))
                .collect();
            Answer::wbxml(sync_answer(&done))
        }
        Some("Ping") => {
            counts.pings.fetch_add(1, Ordering::Relaxed);
            Answer::new(500, Vec::new())
        }
        _ => Answer::new(200, Vec::new()),
    }
}

pub async fn run(mut args: WakeArgs) -> Result<serde_json::Value> {
    let counts = Arc::new(Counts::default());
    let seen = counts.clone();
    let upstream = Upstream::start(move |request: &Received| answer(request, &seen)).await;
    args.run.cluster.upstream = Some(upstream.url());
    let mut run = Run::start(&args.run).await?;
    let mut report = Report::new("proxy");
    run.park(super::fixed(args.run.heartbeat), &mut report)
        .await?;
    let syncs_before = counts.syncs.load(Ordering::Relaxed);
    report.set(
        "enrolled",
        serde_json::json!({
            "folder_syncs": counts.folder_syncs.load(Ordering::Relaxed),
            "syncs": syncs_before,
        }),
    );
    super::wake::changes(&run, &args, &mut report).await?;
    let wakes = run.collected.lock().map(|c| c.wakes.len()).unwrap_or(0);
    report.set("wakes_read", wakes);
    report.set(
        "wakes_acknowledged_by_sync",
        counts.syncs.load(Ordering::Relaxed) - syncs_before,
    );
    report.set(
        "pings_reaching_the_upstream",
        counts.pings.load(Ordering::Relaxed),
    );
    report.set("parked_after", run.parked().await);
    run.finish(report).await
}
