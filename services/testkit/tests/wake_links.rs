//! Direct wake links (issue 14): a watcher sends wakes straight to the frontends that announce
//! a wake port, and I1 never rests on a link: a wake a link takes but does not see
//! acknowledged goes over NATS, and a link to the wrong pod is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dp_proto::ping::PingStatus;
use dp_proto::wake_link::{self, Hello, HelloReply};
use dp_runtime::frames::read_frame;
use dp_testkit::client::ping_body;
use dp_testkit::{wait_for, Device, Env, Frontend, Watcher};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const SECOND: Duration = Duration::from_secs(1);

fn store(env: &Env) -> dp_keyspace::Store {
    dp_keyspace::Store::new(&env.namespace, 86_400)
}

async fn wake_addr(env: &Env, pod: &str) -> Option<String> {
    let mut redis = env.redis().await;
    store(env)
        .wake_addr(&mut redis, pod)
        .await
        .expect("Redis answers")
}

/// Parks `device` on `pod`, sends a change of folder 1, and checks it hears exactly that.
async fn woken(env: &Env, w: &Watcher, device: &mut Device, pod: &str, mailbox: &str) {
    let before = env.owner(mailbox, &device.device_id).await;
    let id = device.device_id.clone();
    let body = ping_body(60, &["1"]);
    let parked = device.ping_within(Some(&body), 10 * SECOND);
    let change = async {
        env.wait_parked(mailbox, &id, pod, before.as_ref()).await;
        w.change(env, mailbox, &["1"]).await;
    };
    let (answer, ()) = tokio::join!(parked, change);
    let answer = answer.ping();
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["1".to_owned()])
    );
}

async fn wait_links_open(w: &Watcher, count: f64) {
    wait_for(
        "the watcher's direct wake link to open",
        10 * SECOND,
        || async move { (w.metric("dp_watcher_wake_links").await == count).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn wakes_go_over_the_link_once_it_is_open_and_the_drain_withdraws_it() {
    let env = Env::new().await;
    env.account("lina", "pw").await;
    let mut a = Frontend::start(&env, "a", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;
    assert!(
        wake_addr(&env, "a").await.is_some(),
        "the frontend announces its wake port"
    );
    let mut phone = Device::new(a.addr, "lina", "pw", "p");
    // The first wake goes over NATS while the link opens.
    woken(&env, &w, &mut phone, "a", "lina").await;
    wait_links_open(&w, 1.0).await;
    for _ in 0..3 {
        woken(&env, &w, &mut phone, "a", "lina").await;
    }
    assert!(w.metric("dp_watcher_link_wakes_total").await >= 3.0);
    assert!(a.metric("dp_frontend_link_wakes_total").await >= 3.0);
    assert_eq!(w.metric("dp_watcher_link_fallbacks_total").await, 0.0);

    a.stop();
    assert_eq!(
        wake_addr(&env, "a").await,
        None,
        "a drained pod withdraws its address"
    );
    wait_links_open(&w, 0.0).await;
    env.cleanup().await;
}

/// A stand-in for a frontend that hangs: it greets the watcher as pod `pod`, then reads wake
/// frames and never acknowledges one. Counts the frames it read.
async fn silent_frontend(namespace: String, pod: String) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let frames = Arc::new(AtomicU64::new(0));
    let seen = frames.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (namespace, pod, seen) = (namespace.clone(), pod.clone(), seen.clone());
            tokio::spawn(async move {
                let _ = swallow(stream, &namespace, &pod, &seen).await;
            });
        }
    });
    (addr, frames)
}

async fn swallow(
    mut stream: TcpStream,
    namespace: &str,
    pod: &str,
    seen: &AtomicU64,
) -> std::io::Result<()> {
    let hello: Hello = serde_json::from_slice(&read_frame(&mut stream, 1 << 20).await?)?;
    assert_eq!(
        (hello.namespace.as_str(), hello.pod.as_str()),
        (namespace, pod)
    );
    let mut out = Vec::new();
    let reply = serde_json::to_vec(&HelloReply::default())?;
    wake_link::put_frame(&mut out, &reply).expect("small");
    stream.write_all(&out).await?;
    loop {
        read_frame(&mut stream, 1 << 20).await?;
        seen.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_wake_a_link_never_acknowledges_goes_over_nats() {
    let env = Env::new().await;
    env.account("mona", "pw").await;
    // The real pod takes wakes over NATS only; its announced address is the stand-in's.
    let a = Frontend::start(&env, "a", &[("--wake-listen-addr", "")]).await;
    let (silent, frames) = silent_frontend(env.namespace.clone(), "a".into()).await;
    let mut redis = env.redis().await;
    store(&env)
        .announce_wake_addr(&mut redis, "a", &silent.to_string(), 60)
        .await
        .expect("Redis answers");
    let w = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(a.addr, "mona", "pw", "p");
    woken(&env, &w, &mut phone, "a", "mona").await;
    wait_links_open(&w, 1.0).await;

    woken(&env, &w, &mut phone, "a", "mona").await;
    assert!(
        frames.load(Ordering::SeqCst) >= 1,
        "the wake went into the link first"
    );
    assert!(w.metric("dp_watcher_link_fallbacks_total").await >= 1.0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_link_to_another_pods_port_is_refused_and_nats_carries_the_wake() {
    let env = Env::new().await;
    env.account("nina", "pw").await;
    let a = Frontend::start(&env, "a", &[("--wake-listen-addr", "")]).await;
    let b = Frontend::start(&env, "b", &[]).await;
    // A stale address: pod a's name, pod b's port (a pod restarted, its address reused).
    let b_port = wake_addr(&env, "b").await.expect("b announced its port");
    let mut redis = env.redis().await;
    store(&env)
        .announce_wake_addr(&mut redis, "a", &b_port, 60)
        .await
        .expect("Redis answers");
    let w = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(a.addr, "nina", "pw", "p");
    for _ in 0..3 {
        woken(&env, &w, &mut phone, "a", "nina").await;
    }
    assert_eq!(w.metric("dp_watcher_wake_links").await, 0.0);
    assert_eq!(w.metric("dp_watcher_link_wakes_total").await, 0.0);
    assert_eq!(b.metric("dp_frontend_link_wakes_total").await, 0.0);
    env.cleanup().await;
}
