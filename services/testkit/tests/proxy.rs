//! Proxy mode against a stand-in ActiveSync server (issue 10): every command but Ping reaches
//! the upstream byte for byte and Ping never does; FolderSync and Sync teach the proxy the
//! device's folders and what it synced; Status 2 stands until a Sync (I1/I2 in proxy mode).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dp_proto::ping::{PingRequest, PingStatus};
use dp_proto::query::Command;
use dp_proto::wbxml::{encode, Element};
use dp_testkit::client::ping_body;
use dp_testkit::upstream::{pattern, Answer, Body, Received, Upstream};
use dp_testkit::{Device, Env, Frontend, Watcher};
use sha2::{Digest, Sha256};

const SECOND: Duration = Duration::from_secs(1);

fn fh(token: u8, text: &str) -> Element {
    Element::with_text(7, token, text)
}

fn folder_sync_response(key: &str, folders: &[(&str, &str)]) -> Vec<u8> {
    dp_testkit::upstream::folder_sync_answer(key, folders)
}

fn folder_sync_request(key: &str) -> Vec<u8> {
    encode(&Element::new(7, 0x16).child(fh(0x12, key))).expect("encodes")
}

/// A Sync request or response with one collection; `status` only in responses.
fn sync_doc(collection: &str, key: &str, status: Option<&str>) -> Vec<u8> {
    let mut c = Element::new(0, 0x0F)
        .child(Element::with_text(0, 0x0B, key))
        .child(Element::with_text(0, 0x12, collection));
    if let Some(status) = status {
        c = c.child(Element::with_text(0, 0x0E, status));
    }
    encode(&Element::new(0, 0x05).child(Element::new(0, 0x1C).child(c))).expect("encodes")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzips");
    encoder.finish().expect("gzips")
}

/// A stand-in that answers FolderSync with `inbox` and `cal`, and Sync with Status 1 and the
/// next key (gzip'd when the device accepts it), and everything else with 200 and no body.
async fn activesync_standin() -> Upstream {
    Upstream::start(|request: &Received| match request.command() {
        Some("FolderSync") => {
            Answer::wbxml(folder_sync_response("1", &[("inbox", "2"), ("cal", "8")]))
        }
        Some("Sync") => {
            let body = sync_doc("inbox", "k-next", Some("1"));
            if request
                .header("accept-encoding")
                .is_some_and(|v| v.contains("gzip"))
            {
                Answer::wbxml(gzip(&body)).header("Content-Encoding", "gzip")
            } else {
                Answer::wbxml(body)
            }
        }
        _ => Answer::new(200, Vec::new()),
    })
    .await
}

async fn proxy_frontend(env: &Env, pod: &str, upstream: &str, extra: &[(&str, &str)]) -> Frontend {
    let mut settings = vec![("--upstream-url", upstream)];
    settings.extend_from_slice(extra);
    Frontend::start(env, pod, &settings).await
}

/// Enrolment through the proxy, then the acknowledge-on-Sync rule end to end: a Status 2 is
/// repeated until the device syncs (a lost answer is harmless), then the next Ping parks. The
/// folders learned on one pod serve a Ping on another; a folder outside them answers Status 7.
/// Ping never reaches the upstream.
#[tokio::test]
async fn status_2_stands_until_the_device_syncs_and_the_hierarchy_is_shared() {
    let env = Env::new().await;
    env.account("dora", "pw").await;
    let upstream = activesync_standin().await;
    let a = proxy_frontend(&env, "a", &upstream.url(), &[]).await;
    let b = proxy_frontend(&env, "b", &upstream.url(), &[]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;

    let mut phone = Device::new(a.addr, "dora", "pw", "phone");
    let answer = phone
        .command(Command::FolderSync, &folder_sync_request("0"), "")
        .await
        .expect("FolderSync");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        folder_sync_response("1", &[("inbox", "2"), ("cal", "8")])
    );
    let sync = sync_doc("inbox", "0", None);
    let gz = "Accept-Encoding: gzip\r\n";
    let answer = phone.command(Command::Sync, &sync, gz).await.expect("Sync");
    assert_eq!(
        answer.header("content-encoding"),
        Some("gzip"),
        "passed untouched"
    );
    assert_eq!(answer.body, gzip(&sync_doc("inbox", "k-next", Some("1"))));

    // On the other pod: a folder outside the learned hierarchy is Status 7 at once.
    phone.move_to(b.addr);
    let stale = phone
        .ping_within(Some(&ping_body(30, &["inbox", "gone"])), 5 * SECOND)
        .await
        .ping();
    assert_eq!(stale.status, PingStatus::FolderSyncRequired);

    // A change wakes the parked Ping.
    let parked = tokio::spawn(async move {
        let r = phone
            .ping_within(Some(&ping_body(30, &["inbox", "cal"])), 10 * SECOND)
            .await;
        (phone, r)
    });
    env.wait_parked("dora", "phone", "b", None).await;
    watcher.change(&env, "dora", &["inbox"]).await;
    let (mut phone, woken) = parked.await.expect("ping task");
    assert_eq!(woken.ping().status, PingStatus::Changes);
    assert_eq!(woken.ping().folders, ["inbox"]);

    // No Sync yet (the answer may have been lost): Status 2 again, at once, on either pod.
    phone.move_to(a.addr);
    let again = phone.ping_within(None, 5 * SECOND).await.ping();
    assert_eq!(again.status, PingStatus::Changes, "repeated until synced");

    // The Sync (gzip'd answer, read through the copy) acknowledges it; the next Ping parks.
    let answer = phone.command(Command::Sync, &sync, gz).await.expect("Sync");
    assert_eq!(answer.status, 200);
    let started = Instant::now();
    let quiet = PingRequest {
        heartbeat: Some(2),
        folders: None,
    };
    let settled = phone.ping_within(Some(&quiet), 10 * SECOND).await.ping();
    assert_eq!(
        settled.status,
        PingStatus::Expired,
        "acknowledged by the Sync"
    );
    assert!(started.elapsed() >= 2 * SECOND - Duration::from_millis(50));

    let received = upstream.received();
    assert!(
        received.iter().all(|r| r.command() != Some("Ping")),
        "Ping never reaches the upstream"
    );
    assert_eq!(
        received
            .iter()
            .filter(|r| r.command() == Some("Sync"))
            .count(),
        2
    );
    assert!(a.metric("dp_frontend_observed_total{what=\"sync\"}").await >= 1.0);
    assert!(
        a.metric("dp_frontend_observed_total{what=\"hierarchy\"}")
            .await
            >= 1.0
    );
    env.cleanup().await;
}

/// A device that keeps Pinging without ever syncing is answered with a growing delay, never
/// in a tight loop (I2); a new change still reaches it at once.
#[tokio::test]
async fn a_device_that_never_syncs_is_backed_off() {
    let env = Env::new().await;
    env.account("eve", "pw").await;
    let upstream = activesync_standin().await;
    let a = proxy_frontend(&env, "a", &upstream.url(), &[]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(a.addr, "eve", "pw", "phone");
    let parked = tokio::spawn(async move {
        let r = phone
            .ping_within(Some(&ping_body(30, &["inbox"])), 10 * SECOND)
            .await;
        (phone, r)
    });
    env.wait_parked("eve", "phone", "a", None).await;
    watcher.change(&env, "eve", &["inbox"]).await;
    let (mut phone, woken) = parked.await.expect("ping task");
    assert_eq!(woken.ping().status, PingStatus::Changes);
    // Two more repeats are answered at once, as Exchange does.
    for _ in 0..2 {
        let started = Instant::now();
        let again = phone.ping_within(None, 5 * SECOND).await.ping();
        assert_eq!(again.status, PingStatus::Changes);
        assert!(started.elapsed() < SECOND, "answered at once");
    }
    // The next is held back: here until its 2 s heartbeat, which is shorter than the backoff.
    let started = Instant::now();
    let short = PingRequest {
        heartbeat: Some(2),
        folders: None,
    };
    let held = phone.ping_within(Some(&short), 10 * SECOND).await.ping();
    assert_eq!(
        held.status,
        PingStatus::Changes,
        "still reported, never lost"
    );
    assert!(
        started.elapsed() >= 2 * SECOND - Duration::from_millis(50),
        "held back, not a tight loop: {:?}",
        started.elapsed()
    );
    assert!(a.metric("dp_frontend_repeat_backoffs_total").await >= 1.0);
    // Held back for 20 s now; a newer change still answers at once.
    let started = Instant::now();
    let before = env.owner("eve", "phone").await;
    let parked = tokio::spawn(async move {
        let long = PingRequest {
            heartbeat: Some(60),
            folders: None,
        };
        phone.ping_within(Some(&long), 30 * SECOND).await
    });
    env.wait_parked("eve", "phone", "a", before.as_ref()).await;
    watcher.change(&env, "eve", &["inbox"]).await;
    let woken = parked.await.expect("ping task").ping();
    assert_eq!(woken.status, PingStatus::Changes);
    assert!(
        started.elapsed() < 15 * SECOND,
        "a new change is not held back"
    );
    env.cleanup().await;
    drop(upstream);
}

/// Pass-through keeps bodies byte-exact both ways (20 MB each way, chunked from the device),
/// end-to-end headers as they were, adds X-Forwarded-For, drops hop-by-hop headers, and hands
/// the upstream's statuses to the device unchanged.
#[tokio::test]
async fn pass_through_is_byte_exact_and_statuses_pass_unchanged() {
    let env = Env::new().await;
    let upstream = Upstream::start(|request: &Received| {
        let query = request.query.as_str();
        if request.method == "OPTIONS" {
            Answer::new(200, Vec::new())
                .header("MS-ASProtocolVersions", "14.1,16.1")
                .header("MS-ASProtocolCommands", "Sync,FolderSync,Ping")
        } else if query.contains("Cmd=ItemOperations") {
            let mut answer = Answer::new(200, Vec::new())
                .header("X-Body-Sha256", &hex(&request.body_sha256))
                .header("MS-ASProtocolVersions", "14.1,16.1");
            answer.body = Body::Pattern(20_000_000);
            answer
        } else if query.contains("Cmd=Provision") {
            Answer::new(449, Vec::new())
        } else if query.contains("Cmd=Settings") {
            Answer::new(451, Vec::new()).header("X-MS-Location", "https://elsewhere/")
        } else if query.contains("Cmd=Search") {
            Answer::new(503, b"busy".to_vec()).header("Retry-After", "7")
        } else {
            let mut answer = Answer::new(200, Vec::new());
            answer.body = Body::Chunked(vec![b"abc".to_vec(), b"defg".to_vec()]);
            answer
        }
    })
    .await;
    let a = proxy_frontend(&env, "a", &upstream.url(), &[]).await;
    let mut phone = Device::new(a.addr, "frank", "pw", "phone");

    let big = pattern(20_000_000);
    let extra = "X-MS-PolicyKey: 1234\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n";
    let answer = phone
        .command(Command::ItemOperations, &big, extra)
        .await
        .expect("ItemOperations");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("MS-ASProtocolVersions"), Some("14.1,16.1"));
    assert_eq!(
        answer.header("X-Body-Sha256"),
        Some(hex(&Sha256::digest(&big).into()).as_str()),
        "the request body arrived byte-exact"
    );
    assert!(
        answer.body == pattern(20_000_000),
        "the answer arrived byte-exact"
    );

    // Chunked from the device, chunked from the upstream.
    let chunked = b"POST /Microsoft-Server-ActiveSync?Cmd=SendMail&User=frank&DeviceId=phone&DeviceType=t HTTP/1.1\r\n\
        Host: t\r\nAuthorization: Basic ZnJhbms6cHc=\r\nTransfer-Encoding: chunked\r\n\r\n\
        3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let answer = phone.send(chunked).await.expect("SendMail");
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"abcdefg"[..])
    );

    for (command, status, header) in [
        (Command::Provision, 449, None),
        (
            Command::Settings,
            451,
            Some(("X-MS-Location", "https://elsewhere/")),
        ),
        (Command::Search, 503, Some(("Retry-After", "7"))),
    ] {
        let answer = phone.command(command, b"", "").await.expect("answered");
        assert_eq!(answer.status, status, "{command:?}");
        if let Some((name, value)) = header {
            assert_eq!(answer.header(name), Some(value), "{command:?}");
        }
    }
    let options = dp_testkit::client::raw(
        a.addr,
        b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("OPTIONS");
    assert_eq!(options.status, 200);
    // With credentials, the upstream's answer is kept a few minutes: asked once, answered twice.
    for _ in 0..2 {
        let options = dp_testkit::client::raw(
            a.addr,
            b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: t\r\n\
              Authorization: Basic ZnJhbms6cHc=\r\n\r\n",
        )
        .await
        .expect("OPTIONS");
        assert_eq!(options.status, 200);
        assert_eq!(
            options.header("MS-ASProtocolCommands"),
            Some("Sync,FolderSync,Ping")
        );
    }

    let received = upstream.received();
    let item = received
        .iter()
        .find(|r| r.command() == Some("ItemOperations"))
        .expect("forwarded");
    assert_eq!(item.body_len, 20_000_000);
    assert_eq!(item.header("X-MS-PolicyKey"), Some("1234"));
    assert_eq!(item.header("MS-ASProtocolVersion"), Some("14.1"));
    assert_eq!(item.header("X-Forwarded-For"), Some("127.0.0.1"));
    assert_eq!(
        item.header("X-Hop"),
        None,
        "named in Connection: hop-by-hop"
    );
    assert!(item
        .header("Authorization")
        .is_some_and(|v| v.starts_with("Basic ")));
    let mail = received
        .iter()
        .find(|r| r.command() == Some("SendMail"))
        .expect("forwarded");
    assert_eq!(mail.body, b"abcde");
    let asked = received.iter().filter(|r| r.method == "OPTIONS").count();
    assert_eq!(asked, 2, "once without credentials, once with: then kept");
    env.cleanup().await;
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An upstream that is down, or slower than UPSTREAM_TIMEOUT_SECS, is 503 + Retry-After (and
/// counted); NTLM is refused with a reason; Pings are still served.
#[tokio::test]
async fn an_unavailable_upstream_is_503_and_pings_go_on() {
    let env = Env::new().await;
    env.account("gus", "pw").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let down = format!(
        "http://{}/Microsoft-Server-ActiveSync",
        closed.local_addr().expect("addr")
    );
    drop(closed);
    let a = proxy_frontend(&env, "a", &down, &[]).await;
    let mut phone = Device::new(a.addr, "gus", "pw", "phone");
    let answer = phone
        .command(Command::Sync, b"", "")
        .await
        .expect("answered");
    assert_eq!(answer.status, 503);
    assert!(answer.header("Retry-After").is_some());
    assert_eq!(a.metric("dp_frontend_upstream_failures_total").await, 1.0);
    let ping = phone
        .ping_within(Some(&ping_body(1, &["inbox"])), 5 * SECOND)
        .await;
    assert_eq!(
        ping.ping().status,
        PingStatus::Expired,
        "Pings do not need the upstream"
    );

    let seen = Arc::new(Mutex::new(0));
    let count = seen.clone();
    let slow = Upstream::start(move |_: &Received| {
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let mut answer = Answer::new(200, Vec::new());
        answer.delay = 3 * SECOND;
        answer
    })
    .await;
    let b = proxy_frontend(&env, "b", &slow.url(), &[("--upstream-timeout-secs", "1")]).await;
    let mut phone = Device::new(b.addr, "gus", "pw", "phone2");
    let answer = phone
        .command(Command::Sync, b"", "")
        .await
        .expect("answered");
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(*seen.lock().unwrap_or_else(|p| p.into_inner()), 1);

    let ntlm = phone
        .command(
            Command::Sync,
            b"",
            "Authorization: NTLM TlRMTVNTUAABAAAA\r\n",
        )
        .await
        .expect("answered");
    assert_eq!(ntlm.status, 401);
    assert!(ntlm.text().contains("NTLM"), "{}", ntlm.text());
    env.cleanup().await;
}

/// `AUTH_MODE=upstream`: no account table. Credentials the upstream never vouched for are
/// checked once with Settings (changing nothing there), then trusted from Redis by every pod;
/// the upstream's refusal reaches the device as it is, and a 401 on any forwarded command
/// revokes the vouch.
#[tokio::test]
async fn upstream_auth_trusts_what_the_server_accepted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new().await;
    let accepting = Arc::new(AtomicBool::new(true));
    let open = accepting.clone();
    let upstream = Upstream::start(move |r: &Received| {
        let good = r.header("Authorization") == Some("Basic aGFuYTpwdw=="); // hana:pw
        if r.query.contains("DeviceId=unprovisioned") {
            return Answer::new(449, Vec::new());
        }
        if good && open.load(Ordering::SeqCst) {
            Answer::new(200, Vec::new())
        } else {
            Answer::new(401, Vec::new()).header("WWW-Authenticate", "Basic realm=\"upstream\"")
        }
    })
    .await;
    let auth = [("--auth-mode", "upstream")];
    let a = proxy_frontend(&env, "a", &upstream.url(), &auth).await;
    let b = proxy_frontend(&env, "b", &upstream.url(), &auth).await;
    let checks = || {
        upstream
            .received()
            .iter()
            .filter(|r| r.command() == Some("Settings"))
            .count()
    };

    let mut phone = Device::new(a.addr, "hana", "pw", "phone");
    let first = phone
        .ping_within(Some(&ping_body(1, &["inbox"])), 5 * SECOND)
        .await;
    assert_eq!(first.ping().status, PingStatus::Expired);
    assert_eq!(checks(), 1, "checked once with Settings");
    let check = upstream
        .received()
        .into_iter()
        .find(|r| r.command() == Some("Settings"))
        .expect("the check");
    assert_eq!(check.header("Authorization"), Some("Basic aGFuYTpwdw=="));
    assert!(!check.body.is_empty(), "a Settings body");
    phone.move_to(b.addr);
    let again = phone.ping_within(None, 5 * SECOND).await;
    assert_eq!(again.ping().status, PingStatus::Expired);
    assert_eq!(checks(), 1, "vouched, on any pod, without asking again");

    let mut thief = Device::new(a.addr, "hana", "wrong", "phone");
    let refused = thief
        .ping_within(Some(&ping_body(1, &["inbox"])), 5 * SECOND)
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("WWW-Authenticate"),
        Some("Basic realm=\"upstream\"")
    );

    let mut new = Device::new(a.addr, "hana", "pw", "unprovisioned");
    let provision = new
        .ping_within(Some(&ping_body(1, &["inbox"])), 5 * SECOND)
        .await;
    assert_eq!(provision.status, 449, "the upstream's answer, as it is");

    // The password changed upstream: the next forwarded command hears 401, and so does the
    // next Ping.
    accepting.store(false, Ordering::SeqCst);
    let sync = phone
        .command(Command::Sync, b"", "")
        .await
        .expect("answered");
    assert_eq!(sync.status, 401);
    let revoked = phone
        .ping_within(Some(&ping_body(1, &["inbox"])), 5 * SECOND)
        .await;
    assert_eq!(revoked.status, 401, "revoked by the upstream's 401");
    env.cleanup().await;
}

/// A change of kind `hierarchy` (a folder created, deleted or renamed; no folder ids needed)
/// answers the mailbox's parked Pings with Status 7; the device's next Pings answer Status 7
/// until it has FolderSynced through the proxy, and then park again.
#[tokio::test]
async fn a_hierarchy_change_answers_status_7_until_folder_sync() {
    let env = Env::new().await;
    env.account("ivy", "pw").await;
    let upstream = activesync_standin().await;
    let a = proxy_frontend(&env, "a", &upstream.url(), &[]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(a.addr, "ivy", "pw", "phone");
    let answer = phone
        .command(Command::FolderSync, &folder_sync_request("0"), "")
        .await
        .expect("FolderSync");
    assert_eq!(answer.status, 200);

    let parked = tokio::spawn(async move {
        let r = phone
            .ping_within(Some(&ping_body(30, &["inbox"])), 10 * SECOND)
            .await;
        (phone, r)
    });
    env.wait_parked("ivy", "phone", "a", None).await;
    let change = serde_json::json!({"mailbox": "ivy", "folders": [], "kind": "hierarchy"});
    let accepted = watcher.ingest(&env, &change).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let (mut phone, woken) = parked.await.expect("ping task");
    assert_eq!(woken.ping().status, PingStatus::FolderSyncRequired);

    let again = phone.ping_within(None, 5 * SECOND).await.ping();
    assert_eq!(
        again.status,
        PingStatus::FolderSyncRequired,
        "until FolderSync"
    );
    let answer = phone
        .command(Command::FolderSync, &folder_sync_request("1"), "")
        .await
        .expect("FolderSync");
    assert_eq!(answer.status, 200);
    let quiet = PingRequest {
        heartbeat: Some(1),
        folders: None,
    };
    let settled = phone.ping_within(Some(&quiet), 5 * SECOND).await.ping();
    assert_eq!(
        settled.status,
        PingStatus::Expired,
        "the FolderSync caught up"
    );
    env.cleanup().await;
}

/// The upstream probe (PROXY_PROBE_SECS): a parked Ping asks GetItemEstimate at the SyncKeys
/// the device last got. Nothing waiting: it stays parked; an estimate above zero (an event
/// missed): Status 2; a global status (142: provision) or HTTP 449: the device hears it.
#[tokio::test]
async fn the_probe_catches_missed_mail_and_relays_what_the_device_must_hear() {
    let env = Env::new().await;
    env.account("jack", "pw").await;
    let mode = Arc::new(Mutex::new("clean"));
    let now = mode.clone();
    let upstream = Upstream::start(move |r: &Received| {
        let estimate = |body: Element| Answer::wbxml(encode(&body).expect("encodes"));
        match r.command() {
            Some("FolderSync") => {
                Answer::wbxml(folder_sync_response("1", &[("inbox", "2"), ("cal", "8")]))
            }
            Some("Sync") => Answer::wbxml(sync_doc("inbox", "k-next", Some("1"))),
            Some("GetItemEstimate") => match *now.lock().unwrap_or_else(|p| p.into_inner()) {
                "449" => Answer::new(449, Vec::new()),
                "142" => estimate(Element::new(6, 0x05).child(Element::with_text(6, 0x0E, "142"))),
                mode => estimate(
                    Element::new(6, 0x05).child(
                        Element::new(6, 0x0D)
                            .child(Element::with_text(6, 0x0E, "1"))
                            .child(
                                Element::new(6, 0x08)
                                    .child(Element::with_text(6, 0x0A, "inbox"))
                                    .child(Element::with_text(
                                        6,
                                        0x0C,
                                        if mode == "estimate" { "2" } else { "0" },
                                    )),
                            ),
                    ),
                ),
            },
            _ => Answer::new(200, Vec::new()),
        }
    })
    .await;
    let a = proxy_frontend(&env, "a", &upstream.url(), &[("--proxy-probe-secs", "1")]).await;
    let mut phone = Device::new(a.addr, "jack", "pw", "phone");
    let fs = phone
        .command(Command::FolderSync, &folder_sync_request("0"), "")
        .await;
    assert_eq!(fs.expect("FolderSync").status, 200);
    let sync = phone
        .command(Command::Sync, &sync_doc("inbox", "0", None), "")
        .await;
    assert_eq!(sync.expect("Sync").status, 200);

    let clean = phone
        .ping_within(Some(&ping_body(3, &["inbox"])), 10 * SECOND)
        .await;
    assert_eq!(clean.ping().status, PingStatus::Expired, "nothing waiting");
    let probes: Vec<Received> = upstream
        .received()
        .into_iter()
        .filter(|r| r.command() == Some("GetItemEstimate"))
        .collect();
    assert!(probes.len() >= 2, "probed every second: {}", probes.len());
    let body = String::from_utf8_lossy(&probes[0].body);
    assert!(
        body.contains("k-next") && body.contains("inbox"),
        "at the last SyncKey"
    );

    *mode.lock().unwrap_or_else(|p| p.into_inner()) = "estimate";
    let missed = phone
        .ping_within(Some(&ping_body(30, &["inbox"])), 10 * SECOND)
        .await
        .ping();
    assert_eq!(missed.status, PingStatus::Changes, "a missed event, caught");
    assert_eq!(missed.folders, ["inbox"]);
    let synced = phone
        .command(Command::Sync, &sync_doc("inbox", "k-next", None), "")
        .await;
    assert_eq!(synced.expect("Sync").status, 200);

    *mode.lock().unwrap_or_else(|p| p.into_inner()) = "142";
    let provision = phone
        .ping_within(Some(&ping_body(30, &["inbox"])), 10 * SECOND)
        .await
        .ping();
    assert_eq!(provision.status, PingStatus::DeviceNotProvisioned);

    *mode.lock().unwrap_or_else(|p| p.into_inner()) = "449";
    let http = phone
        .ping_within(Some(&ping_body(30, &["inbox"])), 10 * SECOND)
        .await;
    assert_eq!(http.status, 449);
    assert!(
        a.metric("dp_frontend_probes_total{result=\"changed\"}")
            .await
            >= 1.0
    );
    env.cleanup().await;
}

/// I1 in proxy mode across a silently dropped connection and a network handover: the Status 2
/// written into a connection the carrier dropped is not heard; the device moves to a new
/// connection and Pings again at once (long before that heartbeat would have run out, where
/// standalone mode's rule would count the answer as heard): the folder is reported again,
/// because only its Sync acknowledges it.
#[tokio::test]
async fn a_wake_lost_in_a_handover_is_reported_until_the_sync() {
    let env = Env::new().await;
    env.account("kim", "pw").await;
    let upstream = activesync_standin().await;
    let a = proxy_frontend(&env, "a", &upstream.url(), &[]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let carrier = dp_testkit::Proxy::start(a.addr).await;
    let mut phone = Device::new(carrier.addr, "kim", "pw", "phone");
    let parked = tokio::spawn(async move {
        let heard =
            tokio::time::timeout(3 * SECOND, phone.ping(Some(&ping_body(60, &["inbox"])))).await;
        (phone, heard.is_ok())
    });
    env.wait_parked("kim", "phone", "a", None).await;
    carrier.silence();
    watcher.change(&env, "kim", &["inbox"]).await;
    dp_testkit::wait_for(
        "the Status 2 written into the dead connection",
        10 * SECOND,
        || async {
            (a.metric("dp_frontend_wake_latency_seconds_count").await >= 1.0).then_some(())
        },
    )
    .await;
    let (mut phone, heard) = parked.await.expect("ping task");
    assert!(!heard, "nothing passes a silenced connection");

    // The handover: a new connection, at once (57 s before that Ping's heartbeat).
    phone.move_to(a.addr);
    let again = phone
        .ping_within(Some(&ping_body(60, &["inbox"])), 5 * SECOND)
        .await
        .ping();
    assert_eq!(again.status, PingStatus::Changes, "not lost");
    assert_eq!(again.folders, ["inbox"]);
    let sync = phone
        .command(Command::Sync, &sync_doc("inbox", "0", None), "")
        .await;
    assert_eq!(sync.expect("Sync").status, 200);
    let settled = phone
        .ping_within(Some(&ping_body(1, &["inbox"])), 5 * SECOND)
        .await
        .ping();
    assert_eq!(
        settled.status,
        PingStatus::Expired,
        "acknowledged by the Sync"
    );
    env.cleanup().await;
}
