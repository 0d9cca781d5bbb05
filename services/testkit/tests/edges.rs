//! What does not wake, and every refusal: Ping statuses 3-6 and HTTP 400, 401, 403, 404, 405,
//! 501 (issue test 9).

use std::time::{Duration, Instant};

use dp_proto::ping::{FolderClass, PingFolder, PingRequest, PingStatus};
use dp_proto::wbxml::{encode, Element};
use dp_testkit::client::{ping_body, raw};
use dp_testkit::{Device, Env, Frontend, Watcher};
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

/// `modified` and `removed` bump versions but do not wake a parked Ping; the next Ping reports
/// them. With WAKE_ON including `modified`, a modification wakes.
#[tokio::test]
async fn modifications_and_removals_do_not_wake() {
    let env = Env::new().await;
    env.account("ivan", "pw").await;
    let a = Frontend::start(&env, "a", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;

    let mut phone = Device::new(a.addr, "ivan", "pw", "p");
    let first = phone
        .ping_within(Some(&ping_body(1, &["1", "2"])), 5 * SECOND)
        .await;
    assert_eq!(first.ping().status, PingStatus::Expired, "baseline");
    let before = env.owner("ivan", "p").await;
    let parked = tokio::spawn(async move {
        let started = Instant::now();
        let response = phone
            .ping_within(Some(&ping_body(2, &["1", "2"])), 10 * SECOND)
            .await;
        (phone, started.elapsed(), response)
    });
    env.wait_parked("ivan", "p", "a", before.as_ref()).await;
    for kind in ["modified", "removed"] {
        let response = w
            .ingest(
                &env,
                &json!({"mailbox": "ivan", "folders": ["1"], "kind": kind}),
            )
            .await;
        assert_eq!(response.status, 202);
    }
    w.wait_dispatched(2).await;
    // Started while that Ping runs out, not between the Status 2 below and the Ping after it:
    // a device back later than the answered Ping's heartbeat hears its folders again (I2),
    // and a watcher can take longer than that 2 s to start on a busy machine.
    let w2 = Watcher::start(&env, "w2", &[("--wake-on", "added,modified")]).await;
    drop(w);
    let (mut phone, elapsed, response) = parked.await.expect("device task");
    assert_eq!(response.ping().status, PingStatus::Expired, "not woken");
    assert!(elapsed >= 2 * SECOND - Duration::from_millis(50));
    let next = phone.ping_within(None, 5 * SECOND).await.ping();
    assert_eq!(
        (next.status, next.folders),
        (PingStatus::Changes, vec!["1".to_owned()])
    );

    // A watcher told to wake on modifications does.
    let before = env.owner("ivan", "p").await;
    let parked = tokio::spawn(async move {
        phone
            .ping_within(Some(&ping_body(30, &["1", "2"])), 10 * SECOND)
            .await
    });
    env.wait_parked("ivan", "p", "a", before.as_ref()).await;
    let response = w2
        .ingest(
            &env,
            &json!({"mailbox": "ivan", "folders": ["2"], "kind": "modified"}),
        )
        .await;
    assert_eq!(response.status, 202);
    let answer = parked.await.expect("device task").ping();
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["2".to_owned()])
    );
    env.cleanup().await;
}

fn folders(n: usize) -> PingRequest {
    PingRequest {
        heartbeat: Some(60),
        folders: Some(
            (0..n)
                .map(|i| PingFolder {
                    id: i.to_string(),
                    class: FolderClass::Email,
                })
                .collect(),
        ),
    }
}

/// Statuses 3, 4, 5 and 6, each with what the device needs to correct itself.
#[tokio::test]
async fn ping_statuses_3_to_6() {
    let env = Env::new().await;
    env.account("judy", "pw").await;
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--min-heartbeat", "2"),
            ("--max-heartbeat", "100"),
            ("--max-folders", "3"),
        ],
    )
    .await;
    let mut phone = Device::new(a.addr, "judy", "pw", "p");

    let three = phone.ping_within(None, 5 * SECOND).await.ping();
    assert_eq!(
        three.status,
        PingStatus::MissingParameters,
        "nothing cached"
    );
    let only_heartbeat = PingRequest {
        heartbeat: Some(20),
        folders: None,
    };
    let three = phone
        .ping_within(Some(&only_heartbeat), 5 * SECOND)
        .await
        .ping();
    assert_eq!(
        three.status,
        PingStatus::MissingParameters,
        "no folders known"
    );

    let low = phone
        .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
        .await
        .ping();
    assert_eq!(
        (low.status, low.heartbeat),
        (PingStatus::InvalidHeartbeat, Some(2))
    );
    let high = phone
        .ping_within(Some(&ping_body(101, &["1"])), 5 * SECOND)
        .await
        .ping();
    assert_eq!(
        (high.status, high.heartbeat),
        (PingStatus::InvalidHeartbeat, Some(100))
    );

    let six = phone
        .ping_within(Some(&folders(4)), 5 * SECOND)
        .await
        .ping();
    assert_eq!(
        (six.status, six.max_folders),
        (PingStatus::TooManyFolders, Some(3))
    );

    // Status 4: bare <Ping/>, a duplicate folder, an unknown class, and bytes that are no WBXML.
    let bare = encode(&Element::new(13, 0x05)).expect("encodes");
    let folder = |id: &str, class: &str| {
        Element::new(13, 0x0A)
            .child(Element::with_text(13, 0x0B, id))
            .child(Element::with_text(13, 0x0C, class))
    };
    let duplicate = encode(
        &Element::new(13, 0x05).child(
            Element::new(13, 0x09)
                .child(folder("1", "Email"))
                .child(folder("1", "Email")),
        ),
    )
    .expect("encodes");
    let unknown_class =
        encode(&Element::new(13, 0x05).child(Element::new(13, 0x09).child(folder("1", "Journal"))))
            .expect("encodes");
    for body in [
        bare,
        duplicate,
        unknown_class,
        b"\x03\x01\x6a\x00\x00\x0d\x45".to_vec(),
        b"not wbxml".to_vec(),
    ] {
        let request = phone.ping_request_with(&body);
        let answer = phone.send(&request).await.expect("answered").ping();
        assert_eq!(answer.status, PingStatus::SyntaxError, "body {body:02x?}");
    }

    // The device recovers: a valid Ping parks and answers at its heartbeat.
    let ok = phone
        .ping_within(Some(&ping_body(2, &["1"])), 10 * SECOND)
        .await
        .ping();
    assert_eq!(ok.status, PingStatus::Expired);
    env.cleanup().await;
}

/// HTTP answers: 400 for an unusable query, 401 (with a challenge) for missing or wrong
/// credentials, 403 for another user's mailbox, 501 for other commands, 404 and 405, and the
/// OPTIONS headers.
#[tokio::test]
async fn http_refusals() {
    let env = Env::new().await;
    env.account("kim", "pw").await;
    env.account("lee", "pw2").await;
    let a = Frontend::start(&env, "a", &[]).await;
    let auth = "Authorization: Basic a2ltOnB3\r\n"; // kim:pw
    let post = |query: &str, auth: &str| {
        format!("POST /Microsoft-Server-ActiveSync?{query} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\n\r\n")
    };
    let ping_query = "Cmd=Ping&User=kim&DeviceId=d&DeviceType=t";
    let cases: Vec<(String, u16)> = vec![
        (post("Cmd=Ping&User=kim&DeviceType=t", auth), 400),
        (post("%%%", auth), 400),
        (post("jRIJBAp2MTQw", auth), 400),
        (post(ping_query, ""), 401),
        (
            post(ping_query, "Authorization: Basic a2ltOndyb25n\r\n"),
            401,
        ), // kim:wrong
        (
            post(ping_query, "Authorization: Basic bm9ib2R5OnB3\r\n"),
            401,
        ), // nobody:pw
        (post("Cmd=Ping&User=lee&DeviceId=d&DeviceType=t", auth), 403),
        (post("Cmd=Sync&User=kim&DeviceId=d&DeviceType=t", auth), 501),
        (
            post("Cmd=Frobnicate&User=kim&DeviceId=d&DeviceType=t", auth),
            501,
        ),
        (
            "POST /elsewhere HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_owned(),
            404,
        ),
        (
            "GET /Microsoft-Server-ActiveSync HTTP/1.1\r\n\r\n".to_owned(),
            405,
        ),
        ("BROKEN\r\n\r\n".to_owned(), 400),
    ];
    for (request, expected) in cases {
        let response = raw(a.addr, request.as_bytes()).await.expect("answered");
        assert_eq!(
            response.status,
            expected,
            "{request:?}: {}",
            response.text()
        );
        if expected == 401 {
            assert_eq!(
                response.header("www-authenticate"),
                Some("Basic realm=\"ActiveSync\"")
            );
        }
    }
    let options = raw(
        a.addr,
        b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\n\r\n",
    )
    .await
    .expect("answered");
    assert_eq!(options.status, 200);
    assert!(options
        .header("ms-asprotocolversions")
        .is_some_and(|v| v.contains("14.1")));
    assert!(options
        .header("ms-asprotocolcommands")
        .is_some_and(|v| v.contains("Ping")));
    assert_eq!(options.header("allow"), Some("OPTIONS,POST"));
    assert!(options.header("ms-server-activesync").is_some());
    assert!(
        a.metric("dp_frontend_http_responses_total{code=\"401\"}")
            .await
            >= 3.0
    );
    env.cleanup().await;
}

/// More connections than MAX_CONNECTIONS: the extra one is told 503 with Retry-After, never a
/// Ping status (Android re-pings at once on those).
#[tokio::test]
async fn overload_answers_503_with_retry_after() {
    let env = Env::new().await;
    env.account("olga", "pw").await;
    let a = Frontend::start(
        &env,
        "a",
        &[("--max-connections", "1"), ("--retry-after-secs", "17")],
    )
    .await;
    let mut first = Device::new(a.addr, "olga", "pw", "first");
    let parked = tokio::spawn(async move {
        first
            .ping_within(Some(&ping_body(3, &["1"])), 10 * SECOND)
            .await
    });
    env.wait_parked("olga", "first", "a", None).await;
    let mut second = Device::new(a.addr, "olga", "pw", "second");
    let refused = second
        .ping_within(Some(&ping_body(3, &["1"])), 5 * SECOND)
        .await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("17"));
    assert_eq!(
        parked.await.expect("task").ping().status,
        PingStatus::Expired,
        "the first is served"
    );
    env.cleanup().await;
}

/// A burst of changes to one folder is dispatched as far fewer bumps and wakes than changes,
/// and the device hears of it once: by the dispatcher (the ingest's `Dp-Follows` tells it to
/// wait for the rest of the request)...
#[tokio::test]
async fn bursts_are_coalesced() {
    burst(
        &[("--coalesce-ms", "200"), ("--wake-at-ingest", "false")],
        0.0,
    )
    .await;
}

/// ... and by the ingest's own wake, which merges a request's changes per mailbox.
#[tokio::test]
async fn bursts_woken_at_the_ingest_are_coalesced() {
    burst(&[], 50.0).await;
}

/// Posts 50 changes of one folder at once; `at_ingest`: how many the ingest should wake.
async fn burst(settings: &[(&str, &str)], at_ingest: f64) {
    let env = Env::new().await;
    env.account("pat", "pw").await;
    let a = Frontend::start(&env, "a", &[]).await;
    let w = Watcher::start(&env, "w", settings).await;
    let mut phone = Device::new(a.addr, "pat", "pw", "p");
    let parked = tokio::spawn(async move {
        let response = phone
            .ping_within(Some(&ping_body(30, &["1"])), 10 * SECOND)
            .await;
        (phone, response)
    });
    env.wait_parked("pat", "p", "a", None).await;
    let burst: Vec<serde_json::Value> = (0..50)
        .map(|_| json!({"mailbox": "pat", "folders": ["1"]}))
        .collect();
    assert_eq!(
        w.ingest(&env, &serde_json::Value::Array(burst))
            .await
            .status,
        202
    );
    let (mut phone, response) = parked.await.expect("task");
    assert_eq!(response.ping().folders, vec!["1".to_owned()]);
    w.wait_dispatched(50).await;
    let wakes = w.metric("dp_watcher_wakes_sent_total").await;
    assert!(
        (1.0..10.0).contains(&wakes),
        "50 changes made {wakes} wakes"
    );
    let woken = w.metric("dp_watcher_changes_woken_at_ingest_total").await;
    assert_eq!(woken, at_ingest);
    // Heard once: the next Ping parks.
    let next = phone
        .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
        .await
        .ping();
    assert_eq!(next.status, PingStatus::Expired);
    env.cleanup().await;
}

/// A device stuck in a re-ping loop gets 503 + Retry-After instead of service, and so does a
/// source address holding too many connections; others are unaffected.
#[tokio::test]
async fn looping_devices_and_greedy_sources_are_limited() {
    let env = Env::new().await;
    env.account("sam", "pw").await;
    let a = Frontend::start(&env, "a", &[("--pings-per-device-per-minute", "3")]).await;
    let mut looping = Device::new(a.addr, "sam", "pw", "loop");
    for _ in 0..3 {
        let answer = looping
            .send(&looping.ping_request_with(b"junk"))
            .await
            .expect("answered");
        assert_eq!(answer.ping().status, PingStatus::SyntaxError);
    }
    let refused = looping
        .send(&looping.ping_request_with(b"junk"))
        .await
        .expect("answered");
    assert_eq!(refused.status, 503);
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    let mut other = Device::new(a.addr, "sam", "pw", "calm");
    let answer = other
        .send(&other.ping_request_with(b"junk"))
        .await
        .expect("answered");
    assert_eq!(
        answer.ping().status,
        PingStatus::SyntaxError,
        "another device is served"
    );
    assert!(
        a.metric("dp_frontend_limited_total{limit=\"pings_per_device\"}")
            .await
            >= 1.0
    );

    let b = Frontend::start(&env, "b", &[("--max-connections-per-source", "2")]).await;
    let _held = [
        tokio::net::TcpStream::connect(b.addr).await.expect("first"),
        tokio::net::TcpStream::connect(b.addr)
            .await
            .expect("second"),
    ];
    let response = raw(
        b.addr,
        b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\n\r\n",
    )
    .await
    .expect("answered");
    assert_eq!(response.status, 503);
    assert!(response.header("retry-after").is_some());
    assert!(response.text().contains("connections_per_source"));
    env.cleanup().await;
}

/// Failed logins: the same 401 whether the account exists or not; past the per-account budget
/// uncached logins to it get 503 (while a device with cached credentials keeps working); past
/// the per-source budget every login from that address does.
#[tokio::test]
async fn failed_logins_are_uniform_and_throttled() {
    let env = Env::new().await;
    env.account("tom", "right").await;
    env.account("val", "right").await;
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--auth-failures-per-account", "2"),
            ("--auth-failures-per-source", "100"),
        ],
    )
    .await;

    let mut cached = Device::new(a.addr, "tom", "right", "cached");
    assert_eq!(
        cached
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );

    let mut wrong = Device::new(a.addr, "tom", "wrong", "w");
    let mut nobody = Device::new(a.addr, "nobody-at-all", "wrong", "n");
    let first = wrong
        .ping(Some(&ping_body(1, &["1"])))
        .await
        .expect("answered");
    let unknown = nobody
        .ping(Some(&ping_body(1, &["1"])))
        .await
        .expect("answered");
    assert_eq!((first.status, unknown.status), (401, 401));
    assert_eq!(
        first.body, unknown.body,
        "no hint whether the account exists"
    );
    assert_eq!(
        first.header("www-authenticate"),
        unknown.header("www-authenticate")
    );
    assert_eq!(
        wrong
            .ping(Some(&ping_body(1, &["1"])))
            .await
            .expect("answered")
            .status,
        401
    );

    // tom's budget is spent: a further guess is refused without being checked.
    let mut guesser = Device::new(a.addr, "tom", "another-guess", "g");
    let throttled = guesser
        .ping(Some(&ping_body(1, &["1"])))
        .await
        .expect("answered");
    assert_eq!(throttled.status, 503);
    assert!(throttled.header("retry-after").is_some());
    // Devices whose credentials were verified before are not locked out (a new device with
    // them is a cache hit), nor is another account.
    let mut fresh = Device::new(a.addr, "tom", "right", "fresh");
    assert_eq!(
        fresh
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );
    assert_eq!(
        cached
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );
    let mut other = Device::new(a.addr, "val", "right", "v");
    assert_eq!(
        other
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );

    let b = Frontend::start(&env, "b", &[("--auth-failures-per-source", "2")]).await;
    for name in ["x1", "x2"] {
        let mut guess = Device::new(b.addr, name, "guess", "g");
        assert_eq!(
            guess
                .ping(Some(&ping_body(1, &["1"])))
                .await
                .expect("answered")
                .status,
            401
        );
    }
    let mut guess = Device::new(b.addr, "x3", "guess", "g");
    assert_eq!(
        guess
            .ping(Some(&ping_body(1, &["1"])))
            .await
            .expect("answered")
            .status,
        503
    );
    assert!(
        b.metric("dp_frontend_auth_total{result=\"throttled\"}")
            .await
            >= 1.0
    );
    env.cleanup().await;
}

/// Head and body sizes are settings: past them, 431 and 413, counted as limits.
#[tokio::test]
async fn head_and_body_limits_are_configurable() {
    let env = Env::new().await;
    let a = Frontend::start(
        &env,
        "a",
        &[("--max-head-bytes", "1024"), ("--max-body-bytes", "100")],
    )
    .await;
    let head = format!(
        "POST /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nX-Filler: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(
        raw(a.addr, head.as_bytes()).await.expect("answered").status,
        431
    );
    let body = "POST /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
    assert_eq!(
        raw(a.addr, body.as_bytes()).await.expect("answered").status,
        413
    );
    assert!(
        a.metric("dp_frontend_limited_total{limit=\"head_size\"}")
            .await
            >= 1.0
    );
    assert!(
        a.metric("dp_frontend_limited_total{limit=\"body_size\"}")
            .await
            >= 1.0
    );
    env.cleanup().await;
}

/// A reconnect storm's shape on a cold pod: many devices of one mailbox log in at once and
/// cost one argon2 verification, not one each.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_logins_of_one_account_verify_once() {
    let env = Env::new().await;
    env.account("herd@example.com", "pw-herd").await;
    let a = Frontend::start(&env, "a", &[]).await;
    let devices = 12;
    let pings: Vec<_> = (0..devices)
        .map(|i| {
            let addr = a.addr;
            tokio::spawn(async move {
                let mut device = Device::new(addr, "herd@example.com", "pw-herd", &format!("d{i}"));
                device
                    .ping_within(Some(&ping_body(1, &["5"])), Duration::from_secs(30))
                    .await
                    .status
            })
        })
        .collect();
    for ping in pings {
        assert_eq!(ping.await.expect("ping task"), 200);
    }
    assert_eq!(
        a.metric("dp_frontend_auth_total{result=\"verified\"}")
            .await,
        1.0
    );
    assert_eq!(
        a.metric("dp_frontend_auth_total{result=\"cache_hit\"}")
            .await,
        f64::from(devices - 1)
    );
    env.cleanup().await;
}

/// A client that pipelines requests and never reads the answers is closed once a write has
/// waited WRITE_TIMEOUT_SECS: it cannot hold a connection (and its task) forever.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_at_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let env = Env::new().await;
    let a = Frontend::start(&env, "a", &[("--write-timeout-secs", "1")]).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let stream = socket.connect(a.addr).await.expect("connects");
    let (_reader, mut writer) = stream.into_split();
    let request = b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    let flood = tokio::spawn(async move {
        // Stops when the frontend no longer reads (its writes are blocked), or it closed.
        for _ in 0..10_000 {
            let write = writer.write_all(&request);
            if !matches!(
                tokio::time::timeout(Duration::from_secs(2), write).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        writer
    });
    dp_testkit::wait_for(
        "the frontend to close the connection that never reads",
        Duration::from_secs(20),
        || async { (a.metric("dp_frontend_connections").await == 0.0).then_some(()) },
    )
    .await;
    drop(flood.await.expect("flood task"));
    env.cleanup().await;
}

/// Targeted lockout: wrong passwords against an account trip its per-account budget, yet its
/// working device goes on when its cached login runs out: credentials verified before are
/// checked again, not throttled as a guess.
#[tokio::test]
async fn guessing_an_accounts_password_does_not_lock_out_its_devices() {
    let env = Env::new().await;
    env.account("lena", "pw").await;
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--auth-cache-ttl-secs", "1"),
            ("--auth-failures-per-account", "3"),
        ],
    )
    .await;
    let mut phone = Device::new(a.addr, "lena", "pw", "phone");
    let first = phone
        .ping_within(Some(&ping_body(1, &["1"])), Duration::from_secs(5))
        .await;
    assert_eq!(first.ping().status, PingStatus::Expired);
    let mut thief = Device::new(a.addr, "lena", "guess", "other");
    let mut throttled = false;
    for _ in 0..6 {
        let answer = thief
            .ping_within(Some(&ping_body(1, &["1"])), Duration::from_secs(5))
            .await;
        throttled |= answer.status == 503;
    }
    assert!(throttled, "the guesses are throttled");
    // The device's cache entry runs out (1 s) while it keeps Pinging: every Ping is answered.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Each Ping waits out its 1 s heartbeat: the loop is paced by the protocol itself.
        let answer = phone.ping_within(None, Duration::from_secs(5)).await;
        assert_eq!(answer.status, 200, "a working device is not locked out");
        if a.metric("dp_frontend_auth_total{result=\"verified\"}")
            .await
            >= 2.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the device's credentials were never verified again"
        );
    }
    let guess = thief
        .ping_within(Some(&ping_body(1, &["1"])), Duration::from_secs(5))
        .await;
    assert_eq!(guess.status, 503, "guesses stay throttled");
    env.cleanup().await;
}

/// The ingest API knows a caller before it reads a body: a wrong token announcing a megabyte it
/// never sends is answered 401 at once, not waited for.
#[tokio::test]
async fn the_ingest_api_checks_the_token_before_the_body() {
    let env = Env::new().await;
    let w = Watcher::start(&env, "w", &[]).await;
    let request =
        "POST /v1/changes HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer wrong-token-0123456789\r\n\
                   Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
    let answer = tokio::time::timeout(5 * SECOND, raw(w.addr, request.as_bytes()))
        .await
        .expect("answered without the body")
        .expect("an answer");
    assert_eq!(answer.status, 401);
    env.cleanup().await;
}

/// A head trickled (or never finished) on the ingest or admin port is cut off at the header
/// timeout, not held open.
#[tokio::test]
async fn unfinished_heads_on_the_ingest_and_admin_ports_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let w = Watcher::start(&env, "w", &[]).await;
    for addr in [w.addr, w.admin] {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        stream
            .write_all(b"POST /v1/changes HTTP/1.1\r\nHost: w\r\n")
            .await
            .expect("writes");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            dp_runtime::admin::HEADER_TIMEOUT + 20 * SECOND,
            stream.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "{addr}: the server closed the connection");
    }
    env.cleanup().await;
}

/// Bounded state and rate per mailbox: a device beyond MAX_DEVICES_PER_MAILBOX is refused with
/// 503 + Retry-After while the known ones keep working; PINGS_PER_MAILBOX_PER_MINUTE counts a
/// mailbox's devices together.
#[tokio::test]
async fn a_mailbox_is_bounded_in_devices_and_pings() {
    let env = Env::new().await;
    env.account("mara", "pw").await;
    let a = Frontend::start(&env, "a", &[("--max-devices-per-mailbox", "2")]).await;
    let mut devices: Vec<Device> = (0..3)
        .map(|i| Device::new(a.addr, "mara", "pw", &format!("d{i}")))
        .collect();
    for device in devices.iter_mut().take(2) {
        let answer = device
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await;
        assert_eq!(answer.ping().status, PingStatus::Expired);
    }
    let refused = devices[2]
        .ping(Some(&ping_body(1, &["1"])))
        .await
        .expect("answer");
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    let again = devices[0]
        .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
        .await;
    assert_eq!(
        again.ping().status,
        PingStatus::Expired,
        "a known device still Pings"
    );
    assert_eq!(
        a.metric("dp_frontend_limited_total{limit=\"devices_per_mailbox\"}")
            .await,
        1.0
    );

    let b = Frontend::start(&env, "b", &[("--pings-per-mailbox-per-minute", "2")]).await;
    let mut phones: Vec<Device> = (0..2)
        .map(|i| Device::new(b.addr, "mara", "pw", &format!("d{i}")))
        .collect();
    for phone in phones.iter_mut() {
        let answer = phone
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await;
        assert_eq!(answer.ping().status, PingStatus::Expired);
    }
    let over = phones[0]
        .ping(Some(&ping_body(1, &["1"])))
        .await
        .expect("answer");
    assert_eq!(over.status, 503, "the mailbox's third Ping this minute");
    assert_eq!(
        b.metric("dp_frontend_limited_total{limit=\"pings_per_mailbox\"}")
            .await,
        1.0
    );
    env.cleanup().await;
}

/// Issue 12, item 5: behind a balancer, limits see the device. With PROXY_PROTOCOL the
/// per-source connection limit counts the address in each connection's PROXY header (v1 or v2)
/// and a connection without one is closed; with TRUSTED_PROXIES the failed-login throttle
/// counts the X-Forwarded-For client of a trusted peer, so one client's guesses do not lock out
/// another behind the same balancer.
#[tokio::test]
async fn limits_see_the_client_behind_a_balancer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    env.account("pia", "pw").await;
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--proxy-protocol", "true"),
            ("--max-connections-per-source", "1"),
        ],
    )
    .await;
    let phone = Device::new(a.addr, "pia", "pw", "p1");
    let ping = phone.ping_request(Some(&ping_body(30, &["1"])));
    let addr = a.addr;
    let connect = |header: Vec<u8>| {
        let ping = ping.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connects");
            stream.write_all(&header).await.expect("header");
            stream.write_all(&ping).await.expect("Ping");
            stream
        }
    };
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 10.0.0.1 40000 8080\r\n").into_bytes();
    // A parked Ping from 203.0.113.1 holds that address's one connection.
    let held = connect(v1("203.0.113.1")).await;
    env.wait_parked("pia", "p1", "a", None).await;
    let mut again = connect(v1("203.0.113.1")).await;
    let answer = dp_testkit::client::read_response(&mut again, &mut Vec::new())
        .await
        .expect("an answer");
    assert_eq!(answer.status, 503, "the same client over its limit");
    // Another client behind the same balancer (PROXY v2) is not counted with it.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([
        0x21, 0x11, 0, 12, 198, 51, 100, 2, 10, 0, 0, 1, 0x9C, 0x40, 0x1F, 0x90,
    ]);
    let other = Device::new(a.addr, "pia", "pw", "p2");
    let mut stream = tokio::net::TcpStream::connect(a.addr)
        .await
        .expect("connects");
    stream.write_all(&v2).await.expect("header");
    stream
        .write_all(&other.ping_request(Some(&ping_body(1, &["1"]))))
        .await
        .expect("Ping");
    let answer = dp_testkit::client::read_response(&mut stream, &mut Vec::new())
        .await
        .expect("an answer");
    assert_eq!(answer.ping().status, PingStatus::Expired);
    // No header: closed without an answer.
    let mut bare = tokio::net::TcpStream::connect(a.addr)
        .await
        .expect("connects");
    bare.write_all(&ping).await.expect("Ping");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(10 * SECOND, bare.read_to_end(&mut rest)).await;
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP"),
        "no answer without a header"
    );
    assert_eq!(
        a.metric("dp_frontend_limited_total{limit=\"proxy_protocol\"}")
            .await,
        1.0
    );
    drop(held);

    // X-Forwarded-For from a trusted peer: one client's wrong passwords throttle that client.
    let b = Frontend::start(
        &env,
        "b",
        &[
            ("--trusted-proxies", "127.0.0.0/8"),
            ("--auth-failures-per-source", "2"),
        ],
    )
    .await;
    let b_addr = b.addr;
    let login = |password: &str, client: &str| {
        let device = Device::new(b_addr, "pia", password, "p3");
        let request = device.ping_request(Some(&ping_body(1, &["1"])));
        let text = String::from_utf8_lossy(&request).into_owned();
        let forwarded = text.replacen("\r\n", &format!("\r\nX-Forwarded-For: {client}\r\n"), 1);
        async move {
            raw(b_addr, forwarded.as_bytes())
                .await
                .expect("an answer")
                .status
        }
    };
    for _ in 0..3 {
        login("wrong", "198.51.100.7").await;
    }
    assert_eq!(
        login("pw", "198.51.100.7").await,
        503,
        "the guessing client is throttled"
    );
    assert_eq!(
        login("pw", "198.51.100.8").await,
        200,
        "another client is not"
    );
    env.cleanup().await;
}
