//! Store sources (issue 11) against a real Dovecot 2.3 from Debian (`scripts/peers.sh start`):
//! `contrib/dovecot/directpush.lua` runs in Dovecot's own mail processes, and what it posts in
//! the store's words reaches each device under its own ServerIds, learned by the proxy from
//! FolderSync. Dovecot's own OX driver reaches the same through `PUT /v1/ox`.

use std::time::{Duration, Instant};

use dp_proto::ping::PingStatus;
use dp_proto::query::Command;
use dp_proto::wbxml::{encode, Element};
use dp_testkit::client::ping_body;
use dp_testkit::dovecot::{self, MailUser};
use dp_testkit::imap::Imap;
use dp_testkit::upstream::{folder_sync_tree, sync_echo, sync_request, Answer, Received, Upstream};
use dp_testkit::{Device, Env, Frontend, HttpResponse, Watcher};

const SECOND: Duration = Duration::from_secs(1);

/// The phone's ServerIds are Z-Push-like, the tablet's SOGo-like: one store change must reach
/// each under its own.
fn hierarchy(device: &str) -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    if device.starts_with("phone") {
        vec![
            ("1", "0", "Posteingang", "2"),
            ("3", "0", "Gesendet", "5"),
            ("7", "0", "Archive", "12"),
            ("8", "0", "Kalender", "8"),
        ]
    } else {
        vec![
            ("mail/INBOX", "0", "Inbox", "2"),
            ("mail/Sent", "0", "Sent", "5"),
            ("mail/Archive", "0", "Archive", "12"),
        ]
    }
}

async fn standin() -> Upstream {
    Upstream::start(|request: &Received| {
        let device = request
            .query
            .split('&')
            .find_map(|p| p.strip_prefix("DeviceId="))
            .unwrap_or_default();
        match request.command() {
            Some("FolderSync") => Answer::wbxml(folder_sync_tree("1", &hierarchy(device))),
            Some("Sync") => sync_echo(request),
            _ => Answer::new(200, Vec::new()),
        }
    })
    .await
}

async fn enrol(frontend: &Frontend, user: &str, device_id: &str) -> Device {
    let mut device = Device::new(frontend.addr, user, "pw", device_id);
    let request =
        encode(&Element::new(7, 0x16).child(Element::with_text(7, 0x12, "0"))).expect("encodes");
    let answer = device
        .command(Command::FolderSync, &request, "")
        .await
        .expect("FolderSync");
    assert_eq!(answer.status, 200, "{}", answer.text());
    device
}

type Parked = tokio::task::JoinHandle<(Device, HttpResponse, Instant)>;

/// Parks each device's Ping on `folders` and waits until Redis names the new Ping its owner.
async fn park(
    env: &Env,
    user: &str,
    devices: Vec<(Device, &[&str])>,
    owners: &mut Vec<Option<dp_keyspace::Owner>>,
) -> Vec<Parked> {
    owners.resize(devices.len(), None);
    let mut parked = Vec::new();
    for (i, (mut device, folders)) in devices.into_iter().enumerate() {
        let id = device.device_id.clone();
        let body = ping_body(120, folders);
        parked.push(tokio::spawn(async move {
            let answer = device.ping_within(Some(&body), 30 * SECOND).await;
            (device, answer, Instant::now())
        }));
        owners[i] = Some(env.wait_parked(user, &id, "a", owners[i].as_ref()).await);
    }
    parked
}

/// Syncs a collection through the proxy, as a device does after a Status 2: in proxy mode
/// that is what acknowledges it.
async fn sync(device: &mut Device, collection: &str) {
    let answer = device
        .command(Command::Sync, &sync_request(collection, "k1"), "")
        .await
        .expect("Sync");
    assert_eq!(answer.status, 200);
}

/// Waits for the Pings, each of which must report `expected`, and syncs it; returns the
/// devices and how long after `since` each answered.
async fn woken(parked: Vec<Parked>, expected: &[&str], since: Instant) -> Vec<(Device, Duration)> {
    let mut out = Vec::new();
    for (task, expected) in parked.into_iter().zip(expected) {
        let (mut device, answer, at) = task.await.expect("ping task");
        let ping = answer.ping();
        assert_eq!(ping.status, PingStatus::Changes, "{expected}: {ping:?}");
        assert_eq!(ping.folders, [expected.to_string()]);
        sync(&mut device, expected).await;
        out.push((device, at.saturating_duration_since(since)));
    }
    out
}

fn print_latency(what: &str, took: &[Duration]) {
    let ms: Vec<String> = took
        .iter()
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .collect();
    println!("{what}: {}", ms.join(", "));
}

/// The mail is in INBOX, and Dovecot's log names the POST that failed for this user.
async fn delivered_and_logged(user: &MailUser, subject: &str) {
    let found = user
        .doveadm(
            &["search"],
            &["mailbox", "INBOX", "header", "Subject", subject],
        )
        .await
        .expect("search");
    assert!(!found.trim().is_empty(), "the mail was delivered");
    assert!(
        dovecot::log()
            .lines()
            .any(|l| l.contains(&user.name) && l.contains("directpush: POST")),
        "Dovecot's log names the failed POST for {}",
        user.name
    );
}

/// LMTP delivery, `dovecot-lda` delivery and an IMAP APPEND each wake the parked Pings of two
/// devices on their own Inbox or Archive ServerIds; `doveadm mailbox create` answers Status 7;
/// with the watcher gone, delivery still succeeds and Dovecot logs why no one was told.
#[tokio::test]
async fn dovecot_changes_wake_each_devices_own_folders() {
    let env = Env::new().await;
    let upstream = standin().await;
    let frontend = Frontend::start(&env, "a", &[("--upstream-url", &upstream.url())]).await;
    let mut watcher = Watcher::start(&env, "w", &[]).await;
    let user = MailUser::create(
        "dp",
        &MailUser::directpush_fields(watcher.addr, &env.ingest_token),
    )
    .await;
    env.account(&user.name, "pw").await;
    user.doveadm(&["mailbox", "create"], &["Archive"])
        .await
        .expect("Archive created");
    // That is a hierarchy change: dispatched before the devices' FolderSync, or they would
    // rightly hear Status 7 first.
    watcher.wait_dispatched(1).await;
    let phone = enrol(&frontend, &user.name, "phone1").await;
    let tablet = enrol(&frontend, &user.name, "tablet1").await;

    // LMTP, as an MTA delivers.
    let mut owners = Vec::new();
    let parked = park(
        &env,
        &user.name,
        vec![(phone, &["1", "8"]), (tablet, &["mail/INBOX"])],
        &mut owners,
    )
    .await;
    let (_, message) = dovecot::message(&user.name);
    let since = Instant::now();
    user.deliver_lmtp(&message).await.expect("LMTP delivery");
    let devices = woken(parked, &["1", "mail/INBOX"], since).await;
    print_latency(
        "LMTP delivery -> Status 2",
        &devices.iter().map(|d| d.1).collect::<Vec<_>>(),
    );
    let [(phone, _), (tablet, _)] = <[_; 2]>::try_from(devices).ok().expect("two");

    // dovecot-lda, as a local MTA delivers.
    let parked = park(
        &env,
        &user.name,
        vec![(phone, &["1", "8"]), (tablet, &["mail/INBOX"])],
        &mut owners,
    )
    .await;
    let since = Instant::now();
    let took = user.deliver_lda(&message).await.expect("LDA delivery");
    println!(
        "dovecot-lda with the script: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    let devices = woken(parked, &["1", "mail/INBOX"], since).await;
    let [(phone, _), (tablet, _)] = <[_; 2]>::try_from(devices).ok().expect("two");

    // An IMAP APPEND to the Archive (a user folder, mapped by its DisplayName).
    let parked = park(
        &env,
        &user.name,
        vec![(phone, &["1", "7"]), (tablet, &["mail/Archive"])],
        &mut owners,
    )
    .await;
    let mut imap = Imap::login(dovecot::IMAP, &user.name, "pw")
        .await
        .expect("IMAP login");
    imap.append("Archive", &message).await.expect("APPEND");
    let devices = woken(parked, &["7", "mail/Archive"], Instant::now()).await;
    let [(phone, _), _] = <[_; 2]>::try_from(devices).ok().expect("two");

    // A folder created: Status 7, FolderSync first.
    let parked = park(&env, &user.name, vec![(phone, &["1"])], &mut owners).await;
    user.doveadm(&["mailbox", "create"], &["Projects"])
        .await
        .expect("Projects created");
    for task in parked {
        let (_, answer, _) = task.await.expect("ping task");
        assert_eq!(answer.ping().status, PingStatus::FolderSyncRequired);
    }

    // The watcher is gone: delivery is not held up or failed, and the log says why.
    watcher.kill();
    let (subject, message) = dovecot::message(&user.name);
    let took = user
        .deliver_lda(&message)
        .await
        .expect("delivered without a watcher");
    println!(
        "dovecot-lda with the watcher down: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    delivered_and_logged(&user, &subject).await;
    env.cleanup().await;
}

/// An installation that runs Dovecot's OX driver needs no script: `PUT /v1/ox` takes its
/// notification, Basic credentials from the driver's URL.
#[tokio::test]
async fn dovecots_ox_driver_wakes_through_the_ox_endpoint() {
    let env = Env::new().await;
    let upstream = standin().await;
    let frontend = Frontend::start(&env, "a", &[("--upstream-url", &upstream.url())]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let driver = format!(
        "ox:url=http://directpush:{}@{}/v1/ox",
        env.ingest_token, watcher.addr
    );
    let user = MailUser::create("ox", &[("push_notification_driver2", driver)]).await;
    env.account(&user.name, "pw").await;
    // The OX driver pushes only for users whose metadata names them.
    user.doveadm(
        &["mailbox", "metadata", "set"],
        &[
            "-s",
            "",
            "/private/vendor/vendor.dovecot/http-notify",
            &format!("user={}", user.name),
        ],
    )
    .await
    .expect("metadata set");
    let tablet = enrol(&frontend, &user.name, "tablet1").await;
    let parked = park(
        &env,
        &user.name,
        vec![(tablet, &["mail/INBOX"])],
        &mut Vec::new(),
    )
    .await;
    let (_, message) = dovecot::message(&user.name);
    user.deliver_lmtp(&message).await.expect("LMTP delivery");
    woken(parked, &["mail/INBOX"], Instant::now()).await;
    assert!(
        watcher
            .metric("dp_watcher_ingest_requests_total{code=\"202\"}")
            .await
            >= 1.0,
        "through the ingest server"
    );
    env.cleanup().await;
}

/// A watcher that takes the connection and never answers holds a delivery no longer than
/// `directpush_timeout_msecs`; the mail is delivered and the log says why no one was told.
#[tokio::test]
async fn a_watcher_that_never_answers_does_not_hold_delivery() {
    // Connections complete into the backlog and are never read.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let user = MailUser::create(
        "slow",
        &[
            (
                "directpush_url",
                format!("http://{}", silent.local_addr().expect("addr")),
            ),
            ("directpush_token", "t".repeat(16)),
            ("directpush_timeout_msecs", "300".into()),
        ],
    )
    .await;
    let (subject, message) = dovecot::message(&user.name);
    let took = user.deliver_lda(&message).await.expect("delivered");
    println!(
        "dovecot-lda with a silent watcher (timeout 300 ms): {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    delivered_and_logged(&user, &subject).await;
}
