//! TLS on the Ping listener: real rustls and curl clients, TLS 1.2 and 1.3 with ALPN http/1.1,
//! and a certificate rotated while Pings stay parked.

use std::time::Duration;

use dp_proto::ping::PingStatus;
use dp_testkit::client::ping_body;
use dp_testkit::tls::TestCa;
use dp_testkit::{wait_for, Device, Env, Frontend, Watcher};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECOND: Duration = Duration::from_secs(1);

async fn tls_frontend(env: &Env, ca: &TestCa, pod: &str) -> Frontend {
    tls_frontend_with(env, ca, pod, &[]).await
}

async fn tls_frontend_with(env: &Env, ca: &TestCa, pod: &str, more: &[(&str, &str)]) -> Frontend {
    let (cert, key) = (ca.cert_path(), ca.key_path());
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let mut args = vec![
        ("--tls-cert", cert.as_str()),
        ("--tls-key", key.as_str()),
        ("--tls-reload-secs", "1"),
    ];
    args.extend_from_slice(more);
    Frontend::start(env, pod, &args).await
}

/// One visit of a device whose memory of servers (its ticket) is `connector`'s session cache:
/// an OPTIONS exchange, which also makes sure a TLS 1.3 ticket sent after the handshake is read.
async fn visit(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> Option<rustls::HandshakeKind> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tls.get_ref().1.handshake_kind()
}

/// The certificate and ALPN protocol a fresh handshake gets, and an OPTIONS answer's status.
async fn handshake(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (
    CertificateDer<'static>,
    Option<Vec<u8>>,
    rustls::ProtocolVersion,
    String,
) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = ca
        .client(versions)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().expect("server certificate")[0]
        .clone()
        .into_owned();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let version = session.protocol_version().expect("version");
    tls.write_all(b"OPTIONS /Microsoft-Server-ActiveSync HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (cert, alpn, version, status)
}

#[tokio::test]
async fn pings_over_tls_wake_and_both_versions_negotiate_http_1_1() {
    let env = Env::new().await;
    env.account("tess", "pw").await;
    let ca = TestCa::new();
    ca.issue(1);
    let a = tls_frontend(&env, &ca, "a").await;
    let w = Watcher::start(&env, "w", &[]).await;

    for (versions, expected) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
    ] {
        let (_, alpn, version, status) = handshake(&ca, a.addr, versions).await;
        assert_eq!(version, expected);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }

    let mut phone = Device::new(a.addr, "tess", "pw", "p");
    phone.tls = Some(ca.client(&[&rustls::version::TLS13, &rustls::version::TLS12]));
    let parked = tokio::spawn(async move {
        phone
            .ping_within(Some(&ping_body(30, &["5"])), 10 * SECOND)
            .await
    });
    env.wait_parked("tess", "p", "a", None).await;
    w.change(&env, "tess", &["5"]).await;
    let answer = parked.await.expect("task").ping();
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["5".to_owned()])
    );

    // A plaintext client on the TLS port is refused in the handshake, and counted.
    let mut plain = Device::new(a.addr, "tess", "pw", "plain");
    assert!(plain.ping(Some(&ping_body(30, &["5"]))).await.is_err());
    wait_for("the failed handshake to be counted", 5 * SECOND, || async {
        (a.metric("dp_frontend_tls_handshake_failures_total").await >= 1.0).then_some(())
    })
    .await;
    env.cleanup().await;
}

/// What a middlebox that rewrites traffic would send after the handshake (here a record whose
/// tag cannot authenticate) ends a parked Ping's connection, and is counted.
#[tokio::test]
async fn a_tampered_record_ends_a_parked_ping_and_is_counted() {
    let env = Env::new().await;
    env.account("tess", "pw").await;
    let ca = TestCa::new();
    ca.issue(1);
    let a = tls_frontend(&env, &ca, "a").await;
    let phone = Device::new(a.addr, "tess", "pw", "p");
    let tcp = tokio::net::TcpStream::connect(a.addr)
        .await
        .expect("connects");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = ca
        .client(&[&rustls::version::TLS13])
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(&phone.ping_request(Some(&ping_body(300, &["5"]))))
        .await
        .expect("writes");
    tls.flush().await.expect("flushes");
    env.wait_parked("tess", "p", "a", None).await;
    assert_eq!(a.metric("dp_frontend_tls_errors_total").await, 0.0);

    let mut record = vec![23, 3, 3, 0, 32];
    record.extend_from_slice(&[0x55; 32]);
    tls.get_mut().0.write_all(&record).await.expect("writes");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(5 * SECOND, tls.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the frontend closes the connection");
    assert!(
        rest.is_empty(),
        "no answer to a parked Ping whose connection failed"
    );
    wait_for("the TLS error to be counted", 5 * SECOND, || async {
        (a.metric("dp_frontend_tls_errors_total").await >= 1.0).then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn certificate_rotation_while_pings_are_parked() {
    let env = Env::new().await;
    env.account("uma", "pw").await;
    let ca = TestCa::new();
    let first = ca.issue(1);
    let a = tls_frontend(&env, &ca, "a").await;
    let w = Watcher::start(&env, "w", &[]).await;
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];

    let mut phone = Device::new(a.addr, "uma", "pw", "p");
    phone.tls = Some(ca.client(&both));
    let parked = tokio::spawn(async move {
        phone
            .ping_within(Some(&ping_body(60, &["5"])), 30 * SECOND)
            .await
    });
    env.wait_parked("uma", "p", "a", None).await;
    assert_eq!(handshake(&ca, a.addr, &both).await.0, first);

    let second = ca.issue(2);
    let addr = a.addr;
    wait_for(
        "new handshakes to get the new certificate",
        15 * SECOND,
        || {
            let (ca, second) = (&ca, &second);
            async move { (handshake(ca, addr, &both).await.0 == *second).then_some(()) }
        },
    )
    .await;
    assert!(
        a.metric("dp_frontend_tls_reloads_total{result=\"ok\"}")
            .await
            >= 1.0
    );

    // The Ping parked under the old certificate is still there and still wakes.
    w.change(&env, "uma", &["5"]).await;
    let answer = parked.await.expect("task").ping();
    assert_eq!(answer.status, PingStatus::Changes);
    env.cleanup().await;
}

/// A returning device resumes with the ticket its last connection got, in TLS 1.3 and 1.2: the
/// certificate is neither sent nor signed for again (issue 14).
#[tokio::test]
async fn a_returning_device_resumes_with_a_ticket() {
    let env = Env::new().await;
    let ca = TestCa::new();
    ca.issue(1);
    let a = tls_frontend(&env, &ca, "a").await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client configuration: its session cache is the device's memory of the server.
        let connector = ca.client(&[version]);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            kinds.push(visit(&connector, a.addr).await);
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(
            kinds,
            [Some(Full), Some(Resumed), Some(Resumed)],
            "{version:?}"
        );
    }
    env.cleanup().await;
}

/// With `TLS_TICKET_KEYS` shared, a device resumes on another pod than the one that gave it its
/// ticket (what a pod's loss or a rolling update asks of the others); a pod without the keys
/// cannot open the ticket and does a full handshake. Keys rotate in (new first, old still
/// opening) and out (a ticket under a removed key is refused) on reload, without a restart.
#[tokio::test]
async fn a_device_resumes_on_any_pod_that_shares_the_ticket_keys() {
    use rustls::HandshakeKind::{Full, Resumed};
    let env = Env::new().await;
    let ca = TestCa::new();
    ca.issue(1);
    let keys = ca.dir.join("ticket-keys");
    write_ticket_keys(&keys, &[1]);
    let shared = [("--tls-ticket-keys", keys.to_str().expect("utf-8 path"))];
    let a = tls_frontend_with(&env, &ca, "a", &shared).await;
    let b = tls_frontend_with(&env, &ca, "b", &shared).await;
    let own = tls_frontend(&env, &ca, "own").await;

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let phone = ca.client(&[version]);
        assert_eq!(visit(&phone, a.addr).await, Some(Full), "{version:?}");
        assert_eq!(visit(&phone, b.addr).await, Some(Resumed), "{version:?}");
        assert_eq!(visit(&phone, a.addr).await, Some(Resumed), "{version:?}");
        assert_eq!(visit(&phone, own.addr).await, Some(Full), "{version:?}");
    }
    assert_eq!(
        b.metric("dp_frontend_tls_handshakes_total{kind=\"resumed\"}")
            .await,
        2.0
    );
    assert_eq!(
        own.metric("dp_frontend_tls_handshakes_total{kind=\"full\"}")
            .await,
        2.0
    );

    // Rotation in: a new sealing key, the old one still listed, opens yesterday's tickets.
    let phone = ca.client(&[&rustls::version::TLS13]);
    assert_eq!(visit(&phone, a.addr).await, Some(Full));
    rotate_ticket_keys(&b, &keys, &[2, 1]).await;
    assert_eq!(
        visit(&phone, b.addr).await,
        Some(Resumed),
        "sealed under key 1"
    );

    // Rotation out: the ticket b just gave is under key 2; with key 2 gone it is refused.
    rotate_ticket_keys(&b, &keys, &[3]).await;
    assert_eq!(visit(&phone, b.addr).await, Some(Full), "key 2 was removed");
    env.cleanup().await;
}

/// A ticket key file of 48-byte keys, each all `byte`.
fn write_ticket_keys(path: &std::path::Path, bytes: &[u8]) {
    use base64::Engine;
    let lines: Vec<String> = bytes
        .iter()
        .map(|&b| base64::engine::general_purpose::STANDARD.encode([b; 48]))
        .collect();
    let text = format!("# test keys\n{}\n", lines.join("\n"));
    dp_testkit::tls::write_atomically(path, text.as_bytes());
}

/// Writes new keys and waits until `frontend` has reloaded them.
async fn rotate_ticket_keys(frontend: &Frontend, path: &std::path::Path, bytes: &[u8]) {
    const RELOADS: &str = "dp_frontend_tls_reloads_total{result=\"ok\"}";
    let before = frontend.metric(RELOADS).await;
    write_ticket_keys(path, bytes);
    wait_for(
        "the frontend to reload its TLS files",
        10 * SECOND,
        || async { (frontend.metric(RELOADS).await > before).then_some(()) },
    )
    .await;
}

/// curl, an independent TLS client, pinned to TLS 1.2 and to 1.3.
#[tokio::test]
async fn curl_speaks_to_the_tls_listener() {
    let env = Env::new().await;
    let ca = TestCa::new();
    ca.issue(7);
    let a = tls_frontend(&env, &ca, "a").await;
    let url = format!(
        "https://localhost:{}/Microsoft-Server-ActiveSync",
        a.addr.port()
    );
    let resolve = format!("localhost:{}:127.0.0.1", a.addr.port());
    for pin in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let output = std::process::Command::new("curl")
            .args(["-sS", "-i", "-X", "OPTIONS", "--cacert"])
            .arg(ca.ca_pem())
            .args(["--resolve", &resolve])
            .args(pin)
            .arg(&url)
            .output()
            .expect("curl runs (scripts/setup.sh installs it)");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "curl {pin:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("ms-asprotocolversions"),
            "{text}"
        );
    }
    env.cleanup().await;
}
