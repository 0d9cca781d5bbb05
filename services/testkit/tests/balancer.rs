//! A load balancer between the devices and the frontends, and the delivery signal (issue 12's
//! handover, `DELIVERY_CHECK`): a frontend tells a read Status 2 from a lost one by how the
//! connection ends, so the balancer must pass a device's close as a close and its reset as a
//! reset. Real HAProxy (Debian's package) ending TLS, as compose runs it, in front of a
//! frontend that takes the PROXY protocol.
//!
//! Not here: a device's reset through HAProxy in TCP mode. It reached the frontend as a reset
//! in 25 of 27 runs; in two (one under CPU load) HAProxy's close came as a close first and the
//! answer stood, the behaviour before issue 12 (never a repeat). A test of it would fail one
//! run in about fifteen; the frontend's side of a reset is tested directly (`failures.rs`).

use std::time::Duration;

use dp_proto::ping::PingStatus;
use dp_testkit::client::ping_body;
use dp_testkit::haproxy::{self, Haproxy, Mode};
use dp_testkit::{wait_for, Device, Env, Frontend, Watcher};

const MAILBOX: &str = "lena@example.com";

struct Cluster {
    env: Env,
    frontend: Frontend,
    watcher: Watcher,
    haproxy: Haproxy,
    ca: dp_testkit::tls::TestCa,
}

impl Cluster {
    async fn start(mode: Mode, delivery_check: bool) -> Cluster {
        let env = Env::new().await;
        env.account(MAILBOX, "pw-lena").await;
        let check = delivery_check.to_string();
        let frontend = Frontend::start(
            &env,
            "a",
            &[("--proxy-protocol", "true"), ("--delivery-check", &check)],
        )
        .await;
        let watcher = Watcher::start(&env, "w", &[]).await;
        let ca = dp_testkit::tls::TestCa::new();
        ca.issue(1);
        let pem = ca.combined_pem().expect("writes the PEM");
        let plan = haproxy::Plan {
            mode,
            tls: Some(&pem),
            frontends: &[frontend.addr],
            maxconn: 100,
        };
        let haproxy = haproxy::start(&plan, &ca.dir)
            .await
            .expect("haproxy starts");
        Cluster {
            env,
            frontend,
            watcher,
            haproxy,
            ca,
        }
    }

    fn device(&self, addr: std::net::SocketAddr) -> Device {
        let mut device = Device::new(addr, MAILBOX, "pw-lena", "phone");
        device.tls = Some(self.ca.client(&[&rustls::version::TLS13]));
        device
    }

    /// Parks the device's Ping (on folder 5, for 300 s); the task answers what it heard.
    async fn park(
        &self,
        mut device: Device,
    ) -> tokio::task::JoinHandle<(Device, std::io::Result<dp_testkit::HttpResponse>)> {
        let parked = tokio::spawn(async move {
            let answer = device.ping(Some(&ping_body(300, &["5"]))).await;
            (device, answer)
        });
        self.env.wait_parked(MAILBOX, "phone", "a", None).await;
        parked
    }

    async fn connections_closed(&self) {
        wait_for(
            "the frontend's side of the device's connection to close",
            Duration::from_secs(20),
            || async {
                (self.frontend.metric("dp_frontend_connections").await == 0.0).then_some(())
            },
        )
        .await;
    }

    async fn undelivered(&self) -> f64 {
        self.frontend
            .metric("dp_frontend_answers_undelivered_total")
            .await
    }

    /// The device's next Ping, on a new connection: what it hears.
    async fn next_ping(&self, heartbeat: u32) -> (PingStatus, Vec<String>) {
        let mut phone = self.device(self.haproxy.addr);
        let answer = phone
            .ping_within(Some(&ping_body(heartbeat, &["5"])), Duration::from_secs(20))
            .await
            .ping();
        (answer.status, answer.folders)
    }

    async fn cleanup(self) {
        self.env.cleanup().await;
    }
}

/// The device reads its Status 2 and closes its connection; then Pings again. `repeated`: the
/// frontend took the balancer's close for a loss and the next Ping hears folder 5 again.
async fn read_and_close(mode: Mode, delivery_check: bool, repeated: bool) {
    let cluster = Cluster::start(mode, delivery_check).await;
    let parked = cluster.park(cluster.device(cluster.haproxy.addr)).await;
    cluster.watcher.change(&cluster.env, MAILBOX, &["5"]).await;
    let (mut device, answer) = parked.await.expect("ping task");
    let answer = answer.expect("the Status 2 is read").ping();
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["5".to_owned()])
    );
    device.hang_up();
    // Once the frontend's side is closed, the answer is settled one way or the other.
    cluster.connections_closed().await;
    if repeated {
        assert_eq!(cluster.undelivered().await, 1.0);
        assert_eq!(
            cluster.next_ping(300).await,
            (PingStatus::Changes, vec!["5".to_owned()])
        );
    } else {
        assert_eq!(cluster.undelivered().await, 0.0);
        assert_eq!(cluster.next_ping(1).await, (PingStatus::Expired, vec![]));
    }
    cluster.cleanup().await;
}

/// HAProxy ending TLS in TCP mode, as compose runs it: the device's close reaches the frontend
/// as a close, and the Status 2 it read stands.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_answer_through_haproxy_in_tcp_mode_is_heard_once() {
    read_and_close(Mode::Tcp, true, false).await;
}

/// Why `DELIVERY_CHECK` exists: in HTTP mode HAProxy resets its side of the frontend's
/// connection when it closes it, whatever the device did, so a read answer counts as lost and
/// the device hears it twice.
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_in_http_mode_resets_a_connection_whose_answer_was_read() {
    read_and_close(Mode::Http, true, true).await;
}

/// Behind HAProxy in HTTP mode with `DELIVERY_CHECK=false`: the reset is not taken for a loss.
#[tokio::test(flavor = "multi_thread")]
async fn with_delivery_check_off_haproxy_in_http_mode_repeats_nothing() {
    read_and_close(Mode::Http, false, false).await;
}
