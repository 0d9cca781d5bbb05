//! Hostile and broken input over real sockets, to the Ping listener, the admin port and the
//! ingest API: each gets its clear answer, nothing panics, no other device's state changes, and
//! every process keeps serving.

use std::time::Duration;

use dp_proto::ping::PingStatus;
use dp_testkit::client::{http_get, ping_body, post_json, raw, read_response};
use dp_testkit::{Device, Env, Frontend, Watcher};
use serde_json::json;
use tokio::io::AsyncWriteExt;

const SECOND: Duration = Duration::from_secs(1);

fn wbxml(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x03, 0x01, 0x6A, 0x00];
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn broken_requests_get_clear_answers_and_harm_no_one() {
    let env = Env::new().await;
    env.account("victim", "pw").await;
    env.account("we{ird} *>. name", "pw").await;
    let a = Frontend::start(&env, "a", &[("--header-timeout-secs", "1")]).await;
    let w = Watcher::start(&env, "w", &[]).await;

    // A device minding its own business, parked throughout.
    let mut victim = Device::new(a.addr, "victim", "pw", "v");
    let parked = tokio::spawn(async move {
        victim
            .ping_within(Some(&ping_body(60, &["1"])), 60 * SECOND)
            .await
    });
    let owner = env.wait_parked("victim", "v", "a", None).await;

    let auth = "Authorization: Basic dmljdGltOnB3\r\n"; // victim:pw
    let ping = |query: &str, extra: &str, body: &[u8]| {
        let mut request = format!(
            "POST /Microsoft-Server-ActiveSync?{query} HTTP/1.1\r\nHost: t\r\n{auth}{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let device_query = "Cmd=Ping&User=victim&DeviceId=other&DeviceType=t";
    let huge_header = format!("X-Filler: {}\r\n", "a".repeat(20_000));
    let many_headers = "X-Repeat: 1\r\n".repeat(100);
    let nested = wbxml(&[&[0x00, 0x0D, 0x45][..], &[0x49; 50]].concat());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("binary request line", b"\x00\x01\x02 / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("huge header", ping(device_query, &huge_header, b""), 431),
        ("repeated headers", ping(device_query, &many_headers, b""), 400),
        ("Content-Length not a number", ping(device_query, "Content-Length: abc\r\n", b""), 400),
        ("conflicting Content-Length", ping(device_query, "Content-Length: 5\r\n", b""), 400),
        ("body too large", format!("POST /Microsoft-Server-ActiveSync?{device_query} HTTP/1.1\r\nContent-Length: 100000\r\n\r\n").into_bytes(), 413),
        // Both framings at once is how requests are smuggled past proxies.
        ("Content-Length and chunked", ping(device_query, "Transfer-Encoding: chunked\r\n", b""), 400),
        ("Content-Length with a sign", ping(device_query, "Content-Length: +0\r\n", b""), 400),
        (
            "chunked Ping body",
            format!("POST /Microsoft-Server-ActiveSync?{device_query} HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
            411,
        ),
        ("invalid base64 query", ping("!!notbase64!!", "", b""), 400),
        ("base64 lengths past the end", ping("jRIJBAp2MTQw", "", b""), 400),
        ("invalid UTF-8 in the query", ping("Cmd=Ping&User=victim&DeviceId=%FF%FE&DeviceType=t", "", b""), 400),
        ("newline in a DeviceId", ping("Cmd=Ping&User=victim&DeviceId=a%0Ab&DeviceType=t", "", b""), 400),
        (
            "invalid UTF-8 in a header",
            [&b"POST /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nUser-Agent: \xff\xfe\r\nContent-Length: 0\r\n\r\n"[..]].concat(),
            400,
        ),
    ];
    for (what, request, expected) in cases {
        let response = raw(a.addr, &request)
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(response.status, expected, "{what}: {}", response.text());
    }

    // Bodies that are not Pings: Status 4, on a connection that stays usable.
    for (what, body) in [
        (
            "truncated WBXML",
            wbxml(&[0x00, 0x0D, 0x45, 0x48, 0x03, b'6']),
        ),
        ("deeply nested WBXML", nested),
        (
            "invalid UTF-8 in WBXML",
            wbxml(&[0x00, 0x0D, 0x45, 0x48, 0x03, 0xFF, 0x00, 0x01, 0x01]),
        ),
        ("not WBXML at all", b"<Ping/>".to_vec()),
    ] {
        let response = raw(a.addr, &ping(device_query, "", &body))
            .await
            .expect("answered");
        assert_eq!(response.ping().status, PingStatus::SyntaxError, "{what}");
    }

    // A head that never finishes: 408 after the header timeout, not a connection held forever.
    let mut slow = tokio::net::TcpStream::connect(a.addr)
        .await
        .expect("connects");
    slow.write_all(b"POST /Microsoft-Server-ActiveSync?Cmd=Ping HTTP/1.1\r\nHost:")
        .await
        .expect("writes");
    let mut buf = Vec::new();
    let response = tokio::time::timeout(10 * SECOND, read_response(&mut slow, &mut buf))
        .await
        .expect("answered before the test gives up")
        .expect("a response");
    assert_eq!(response.status, 408);
    // A body that never arrives in full: the same.
    let mut promised = ping(device_query, "", &[0u8; 10]);
    promised.truncate(promised.len() - 5);
    let mut short2 = tokio::net::TcpStream::connect(a.addr)
        .await
        .expect("connects");
    short2.write_all(&promised).await.expect("writes");
    let mut buf = Vec::new();
    let response = tokio::time::timeout(10 * SECOND, read_response(&mut short2, &mut buf))
        .await
        .expect("answered")
        .expect("a response");
    assert_eq!(response.status, 408);

    // Awkward names are just names: a mailbox and a DeviceId full of { } * > . and spaces (and
    // : in the DeviceId)
    // park, and a change to that mailbox wakes exactly that device.
    let mut odd = Device::new(
        a.addr,
        "we%7Bird%7D%20*%3E.%20name",
        "pw",
        "d%7B%7D*%3E.%3A%20x",
    );
    // Basic credentials cannot carry ':' in a user name (RFC 7617); the DeviceId can.
    let credentials_user = "we{ird} *>. name";
    let odd_task = {
        let mut request = odd.ping_request(Some(&ping_body(30, &["9"])));
        // The Authorization header carries the raw name; the query carries it percent-encoded.
        let text = String::from_utf8_lossy(&request).into_owned();
        let basic = base64_basic(credentials_user, "pw");
        let fixed = text
            .split("\r\n")
            .map(|l| {
                if l.starts_with("Authorization:") {
                    format!("Authorization: Basic {basic}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        request = fixed.into_bytes();
        tokio::spawn(async move { odd.send(&request).await })
    };
    env.wait_parked(credentials_user, "d{}*>.: x", "a", None)
        .await;
    let response = w
        .ingest(
            &env,
            &json!({"mailbox": credentials_user, "folders": ["9"]}),
        )
        .await;
    assert_eq!(response.status, 202);
    let answer = odd_task.await.expect("task").expect("answered").ping();
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["9".to_owned()])
    );

    // The admin port and the ingest API refuse garbage clearly too.
    assert_eq!(
        raw(a.admin, b"GARBAGE\r\n\r\n")
            .await
            .map(|r| r.status)
            .unwrap_or(400),
        400
    );
    assert_eq!(
        http_get(a.admin, "/nope").await.expect("answered").status,
        404
    );
    let ingest_cases: Vec<(&str, Option<&str>, serde_json::Value, u16)> = vec![
        (
            "wrong token",
            Some("wrong-token-wrong-token"),
            json!({"mailbox": "victim", "folders": ["1"]}),
            401,
        ),
        (
            "no token",
            None,
            json!({"mailbox": "victim", "folders": ["1"]}),
            401,
        ),
        (
            "not a change",
            Some(&env.ingest_token),
            json!({"hello": "world"}),
            400,
        ),
        (
            "newline in a mailbox",
            Some(&env.ingest_token),
            json!({"mailbox": "vic\ntim", "folders": ["1"]}),
            400,
        ),
        (
            "empty folder",
            Some(&env.ingest_token),
            json!({"mailbox": "victim", "folders": [""]}),
            400,
        ),
        (
            "batch over the limit",
            Some(&env.ingest_token),
            serde_json::Value::Array(vec![json!({"mailbox": "x", "folders": ["1"]}); 1001]),
            400,
        ),
    ];
    for (what, token, body, expected) in ingest_cases {
        let response = post_json(w.addr, "/v1/changes", token, &body)
            .await
            .expect("answered");
        assert_eq!(response.status, expected, "{what}: {}", response.text());
    }
    let huge = format!(
        "{{\"mailbox\": \"{}\", \"folders\": [\"1\"]}}",
        "m".repeat(5 << 20)
    );
    let request = format!(
        "POST /v1/changes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{huge}",
        env.ingest_token,
        huge.len()
    );
    let response = raw(w.addr, request.as_bytes()).await.expect("answered");
    assert_eq!(response.status, 413, "body over the limit");

    // Nobody else was touched, and everything still serves.
    assert_eq!(
        env.owner("victim", "v").await,
        Some(owner),
        "the victim's Ping is still the one parked"
    );
    assert_eq!(
        http_get(a.admin, "/healthz")
            .await
            .expect("answered")
            .status,
        200
    );
    assert_eq!(
        http_get(w.admin, "/healthz")
            .await
            .expect("answered")
            .status,
        200
    );
    w.change(&env, "victim", &["1"]).await;
    let answer = parked.await.expect("task").ping();
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["1".to_owned()])
    );
    env.cleanup().await;
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}
