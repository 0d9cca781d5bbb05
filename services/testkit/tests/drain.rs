//! Graceful drain: not ready at once, parked Pings answered spread over DRAIN_SECS with the
//! connection closed, and no change lost while devices move to another pod.

use std::time::{Duration, Instant};

use dp_proto::ping::PingStatus;
use dp_testkit::client::{http_get, ping_body};
use dp_testkit::{wait_for, Device, Env, Frontend, Watcher};
use tokio::sync::mpsc;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_drain_spreads_answers_and_loses_no_change() {
    let env = Env::new().await;
    env.account("rita", "pw").await;
    let mut a = Frontend::start(
        &env,
        "a",
        &[("--drain-delay-secs", "1"), ("--drain-secs", "2")],
    )
    .await;
    let b = Frontend::start(&env, "b", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;

    let (drained_tx, mut drained_rx) = mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let id = format!("d{i}");
        let mut device = Device::new(a.addr, "rita", "pw", &id);
        let (b_addr, drained_tx) = (b.addr, drained_tx.clone());
        tasks.push(tokio::spawn(async move {
            let first = device
                .ping_within(Some(&ping_body(60, &["1"])), 20 * SECOND)
                .await;
            let answer = first.ping();
            let mut heard = answer.folders.clone();
            if answer.status == PingStatus::Expired {
                assert_eq!(
                    first.header("connection"),
                    Some("close"),
                    "a drained device reconnects"
                );
                let _ = drained_tx.send(Instant::now());
            }
            // Like a phone: reconnect (the load balancer now sends it to B) and ping again.
            device.move_to(b_addr);
            while heard.is_empty() {
                let next = device
                    .ping_within(Some(&ping_body(60, &["1"])), 20 * SECOND)
                    .await
                    .ping();
                heard = next.folders;
            }
            heard
        }));
        env.wait_parked("rita", &id, "a", None).await;
    }

    let admin = a.admin;
    let stopping = tokio::task::spawn_blocking(move || {
        a.stop();
        a
    });
    wait_for("A to report not ready", 5 * SECOND, || async move {
        let ready = http_get(admin, "/readyz").await.ok()?;
        (ready.status == 503 && ready.text().contains("draining")).then_some(())
    })
    .await;

    // Three devices drained (2 s spread over six: about a third of a second apart), then new
    // mail: the devices still parked on A and those re-parked on B must all hear of it.
    let mut drained_at = Vec::new();
    while drained_at.len() < 3 {
        let at = tokio::time::timeout(10 * SECOND, drained_rx.recv())
            .await
            .expect("devices are drained")
            .expect("channel open");
        drained_at.push(at);
    }
    let span = drained_at[2] - drained_at[0];
    assert!(
        span >= Duration::from_millis(400),
        "answers spread over the drain, not at once: {span:?}"
    );
    w.change(&env, "rita", &["1"]).await;
    for task in tasks {
        assert_eq!(task.await.expect("device task"), vec!["1".to_owned()]);
    }
    stopping.await.expect("A stopped");
    env.cleanup().await;
}
