//! The watcher's `imap` role (issue 11) against Debian's Dovecot 2.3 with a master user: the
//! mailboxes with parked Pings are watched over IMAP (NOTIFY, or IDLE and polling), a change
//! made while the watcher's connection is cut is reported once it reconnects, and a replica's
//! mailboxes move to another when it dies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dp_proto::ping::PingStatus;
use dp_proto::query::Command;
use dp_proto::wbxml::{encode, Element};
use dp_testkit::client::ping_body;
use dp_testkit::dovecot::{self, MailUser, MASTER};
use dp_testkit::proxy::Proxy;
use dp_testkit::upstream::{folder_sync_tree, sync_echo, sync_request, Answer, Received, Upstream};
use dp_testkit::{Device, Env, Frontend, HttpResponse, Watcher};

const SECOND: Duration = Duration::from_secs(1);

async fn standin() -> Upstream {
    Upstream::start(|request: &Received| match request.command() {
        Some("FolderSync") => Answer::wbxml(folder_sync_tree(
            "1",
            &[
                ("mail/INBOX", "0", "Inbox", "2"),
                ("mail/Archive", "0", "Archive", "12"),
            ],
        )),
        Some("Sync") => sync_echo(request),
        _ => Answer::new(200, Vec::new()),
    })
    .await
}

async fn imap_watcher(env: &Env, pod: &str, imap: SocketAddr, extra: &[(&str, &str)]) -> Watcher {
    let url = format!("imap://{imap}");
    let mut settings = vec![
        ("--roles", "imap"),
        ("--imap-url", url.as_str()),
        ("--imap-master-user", MASTER.0),
        ("--imap-master-password", MASTER.1),
        ("--imap-assign-secs", "1"),
    ];
    settings.extend_from_slice(extra);
    Watcher::start(env, pod, &settings).await
}

async fn enrol(frontend: &Frontend, user: &str) -> Device {
    let mut device = Device::new(frontend.addr, user, "pw", "tablet1");
    let request =
        encode(&Element::new(7, 0x16).child(Element::with_text(7, 0x12, "0"))).expect("encodes");
    let answer = device
        .command(Command::FolderSync, &request, "")
        .await
        .expect("FolderSync");
    assert_eq!(answer.status, 200);
    device
}

type Parked = tokio::task::JoinHandle<(Device, HttpResponse)>;

async fn park(
    env: &Env,
    user: &str,
    mut device: Device,
    owner: &mut Option<dp_keyspace::Owner>,
) -> Parked {
    let id = device.device_id.clone();
    let task = tokio::spawn(async move {
        let answer = device
            .ping_within(Some(&ping_body(120, &["mail/INBOX"])), 40 * SECOND)
            .await;
        (device, answer)
    });
    *owner = Some(env.wait_parked(user, &id, "a", owner.as_ref()).await);
    task
}

/// Waits for the Ping, which must report the Inbox, and syncs it.
async fn woken(parked: Parked) -> Device {
    let (mut device, answer) = parked.await.expect("ping task");
    let ping = answer.ping();
    assert_eq!(ping.status, PingStatus::Changes, "{ping:?}");
    assert_eq!(ping.folders, ["mail/INBOX".to_owned()]);
    let body = sync_request("mail/INBOX", "k1");
    let synced = device
        .command(Command::Sync, &body, "")
        .await
        .expect("Sync");
    assert_eq!(synced.status, 200);
    device
}

/// Waits until `watcher` has caught up `count` sessions: from then on nothing is missed.
async fn wait_sessions(watcher: &Watcher, count: f64) {
    dp_testkit::wait_for(
        &format!("{} to hold {count} IMAP session(s)", watcher.pod),
        20 * SECOND,
        || async move {
            (watcher.metric("dp_watcher_imap_sessions_total").await >= count).then_some(())
        },
    )
    .await
}

/// Which of the two replicas watches the mailbox, once exactly one does and both are known.
async fn watching<'a>(
    env: &Env,
    a: &'a mut Watcher,
    b: &'a mut Watcher,
) -> (&'a mut Watcher, &'a mut Watcher) {
    let redis = env.redis().await;
    let replicas = format!("{}:imap:replicas", env.namespace);
    dp_testkit::wait_for(
        "both IMAP replicas known, one watching",
        20 * SECOND,
        || {
            let (a, b, mut redis, replicas) = (&*a, &*b, redis.clone(), replicas.clone());
            async move {
                let known: i64 = redis::cmd("HLEN")
                    .arg(&replicas)
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                let (x, y) = (
                    a.metric("dp_watcher_imap_watched").await,
                    b.metric("dp_watcher_imap_watched").await,
                );
                (known == 2 && x + y == 1.0).then_some(())
            }
        },
    )
    .await;
    if a.metric("dp_watcher_imap_watched").await == 1.0 {
        (a, b)
    } else {
        (b, a)
    }
}

async fn run(notify: bool) {
    let env = Env::new().await;
    let cut = Proxy::start(dovecot::IMAP.parse().expect("addr")).await;
    let notify_setting = notify.to_string();
    let imap = imap_watcher(
        &env,
        "i",
        cut.addr,
        &[
            ("--imap-notify", &notify_setting),
            ("--imap-poll-secs", "1"),
        ],
    )
    .await;
    let _dispatch = Watcher::start(&env, "w", &[]).await;
    let upstream = standin().await;
    let frontend = Frontend::start(&env, "a", &[("--upstream-url", &upstream.url())]).await;
    let user = MailUser::create("imap", &[]).await;
    env.account(&user.name, "pw").await;
    let mut owner = None;

    // A parked Ping makes its mailbox watched; new mail wakes it.
    let tablet = enrol(&frontend, &user.name).await;
    let parked = park(&env, &user.name, tablet, &mut owner).await;
    wait_sessions(&imap, 1.0).await;
    let (_, message) = dovecot::message(&user.name);
    user.deliver_lmtp(&message).await.expect("LMTP delivery");
    let tablet = woken(parked).await;

    // Mail that lands while the watcher's connection is cut is reported once it is back.
    cut.cut().await;
    let parked = park(&env, &user.name, tablet, &mut owner).await;
    user.deliver_lmtp(&message).await.expect("LMTP delivery");
    cut.restore();
    let tablet = woken(parked).await;
    assert!(imap.metric("dp_watcher_imap_reconnects_total").await >= 1.0);

    // Its replica dies: another takes the mailbox over.
    let mut imap = imap;
    let mut other = imap_watcher(
        &env,
        "j",
        cut.addr,
        &[
            ("--imap-notify", &notify_setting),
            ("--imap-poll-secs", "1"),
        ],
    )
    .await;
    let (dying, taker) = watching(&env, &mut imap, &mut other).await;
    let before = taker.metric("dp_watcher_imap_sessions_total").await;
    dying.kill();
    let died = Instant::now();
    wait_sessions(taker, before + 1.0).await;
    println!(
        "IMAP role (notify={notify}): mailbox watched again {:.1} s after its replica died",
        died.elapsed().as_secs_f64()
    );
    let parked = park(&env, &user.name, tablet, &mut owner).await;
    user.deliver_lmtp(&message).await.expect("LMTP delivery");
    woken(parked).await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_imap_role_watches_with_notify_and_misses_nothing_across_a_cut() {
    run(true).await;
}

#[tokio::test]
async fn the_imap_role_watches_with_idle_where_there_is_no_notify() {
    run(false).await;
}

/// A mailbox is watched while it has a parked Ping, and dropped `IMAP_DROP_AFTER_SECS` after its
/// last one ended; the replica's connections follow.
#[tokio::test]
async fn a_mailbox_without_parked_pings_is_dropped() {
    let env = Env::new().await;
    let imap: SocketAddr = dovecot::IMAP.parse().expect("addr");
    let watcher = imap_watcher(&env, "i", imap, &[("--imap-drop-after-secs", "1")]).await;
    let users = MailUser::create_many("drop", 2, &[]).await;
    let store = dp_keyspace::Store::new(&env.namespace, 86_400);
    let mut redis = env.redis().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // One Ping lasts an hour; the other ends in a moment.
    store
        .mark_pinged(&mut redis, &users[0].name, now + 3_600_000)
        .await
        .expect("marked");
    store
        .mark_pinged(&mut redis, &users[1].name, now + 1_500)
        .await
        .expect("marked");
    wait_sessions(&watcher, 2.0).await;
    dp_testkit::wait_for("the idle mailbox dropped", 20 * SECOND, || async {
        (watcher.metric("dp_watcher_imap_watched").await == 1.0).then_some(())
    })
    .await;
    env.cleanup().await;
}
