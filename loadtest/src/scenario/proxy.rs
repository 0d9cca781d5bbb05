//! `proxy`: the frontends in front of a stand-in ActiveSync server (in this process). Devices
//! enrol through the proxy (FolderSync, Sync), park, and sync what each Status 2 reports, as
//! phones do; changes arrive as in `wake`. Reports parked devices, memory, wake latency and
//! misses, the Syncs that acknowledged wakes, and that no Ping reached the upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use dp_proto::sync::{scan, Sync};
use dp_proto::wbxml::{encode, Element};
use dp_testkit::upstream::{Answer, Received, Upstream};

use crate::report::Report;
use crate::run::{round, Run};
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
    let fh = |token, text: &str| Element::with_text(7, token, text);
    match request.command() {
        Some("FolderSync") => {
            counts.folder_syncs.fetch_add(1, Ordering::Relaxed);
            let mut changes = Element::new(7, 0x0E).child(fh(0x17, "2"));
            for (id, ty) in [("5", "2"), ("2", "12")] {
                changes = changes.child(
                    Element::new(7, 0x0F)
                        .child(fh(0x08, id))
                        .child(fh(0x09, "0"))
                        .child(fh(0x07, id))
                        .child(fh(0x0A, ty)),
                );
            }
            let root = Element::new(7, 0x16)
                .child(fh(0x0C, "1"))
                .child(fh(0x12, "1"))
                .child(changes);
            Answer::wbxml(encode(&root).unwrap_or_default())
        }
        Some("Sync") => {
            let n = counts.syncs.fetch_add(1, Ordering::Relaxed);
            let (asked, _): (Sync, bool) = scan(&request.body);
            let mut collections = Element::new(0, 0x1C);
            for c in &asked.collections {
                collections = collections.child(
                    Element::new(0, 0x0F)
                        .child(Element::with_text(0, 0x0B, format!("k{n}")))
                        .child(Element::with_text(0, 0x12, c.id.as_str()))
                        .child(Element::with_text(0, 0x0E, "1")),
                );
            }
            let root = Element::new(0, 0x05).child(collections);
            Answer::wbxml(encode(&root).unwrap_or_default())
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
    let injector = super::inject(&run, args.changes_per_sec, args.ingest_connections)?;
    tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
    let sent = injector.stop();
    report.set(
        "changes_per_sec_sent",
        round(sent.len() as f64 / args.duration_secs.max(1) as f64),
    );
    super::settle(
        &run,
        &sent,
        Duration::from_secs(args.window_secs),
        &mut report,
    )
    .await?;
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
    run.finish(report)
}
