//! The TLS transport against rustls's client over real sockets: both versions, every suite,
//! key updates, tampering, and the buffers a parked connection holds.

use super::*;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod any_record;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for `localhost` and a client that trusts it, speaking `version`.
fn configs(
    version: &'static rustls::SupportedProtocolVersion,
) -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
    configs_with(version, None)
}

/// The same, the client offering only `suite` when given.
fn configs_with(
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<rustls::SupportedCipherSuite>,
) -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let mut client_provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        client_provider.cipher_suites = vec![suite];
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // So a test can play a device that sends records of its own making.
    client.enable_secret_extraction = true;
    (
        Arc::new(server),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

/// A handshake over real sockets: our server side, rustls's buffered client side.
async fn pair(
    version: &'static rustls::SupportedProtocolVersion,
) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
    pair_with(configs(version)).await
}

async fn pair_with(
    (server, connector): (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector),
) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        TlsStream::accept(tcp, server)
            .await
            .expect("server handshake")
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let client = connector
        .connect(name, tcp)
        .await
        .expect("client handshake");
    (accepted.await.expect("server task"), client)
}

fn held(stream: &TlsStream) -> usize {
    stream.wire.incoming.capacity() + stream.plaintext.capacity() + stream.wire.outgoing.capacity()
}

#[tokio::test]
async fn an_exchange_leaves_no_buffer_held_in_either_version() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut server, mut client) = pair(version).await;
        assert_eq!(held(&server), 0, "after the handshake ({version:?})");
        client
            .write_all(b"POST /ping HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut request = [0u8; 23];
        server.read_exact(&mut request).await.expect("read");
        assert_eq!(&request, b"POST /ping HTTP/1.1\r\n\r\n");
        server
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("answer");
        server.flush().await.expect("flush");
        let mut answer = [0u8; 19];
        client.read_exact(&mut answer).await.expect("client read");
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(held(&server), 0, "parked after an exchange ({version:?})");
    }
}

/// Each AEAD suite the provider offers, TLS 1.3 and 1.2: our record layer and rustls's
/// client agree on every byte, both ways, across several records each way.
#[tokio::test]
async fn every_cipher_suite_round_trips() {
    use rustls::crypto::ring::cipher_suite as cs;
    let suites = [
        (&rustls::version::TLS13, cs::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, cs::TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, cs::TLS13_CHACHA20_POLY1305_SHA256),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (version, suite) in suites {
        let (mut server, mut client) = pair_with(configs_with(version, Some(suite))).await;
        let name = format!("{:?}", suite.suite());
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        for round in 0..3 {
            client.write_all(&big).await.expect("client sends");
            client.flush().await.expect("client flush");
            let mut got = vec![0u8; big.len()];
            server.read_exact(&mut got).await.expect("server reads");
            assert!(got == big, "{name}, round {round}: server read");
            server.write_all(&got).await.expect("server sends");
            server.flush().await.expect("server flush");
            let mut back = vec![0u8; big.len()];
            client.read_exact(&mut back).await.expect("client reads");
            assert!(back == big, "{name}, round {round}: client read");
        }
        assert_eq!(held(&server), 0, "{name}");
    }
}

/// A device that rotates its keys mid-connection (TLS 1.3 KeyUpdate, asking for ours too)
/// keeps talking: we follow its new key and answer with our own.
#[tokio::test]
async fn a_key_update_is_followed_both_ways() {
    let (mut server, mut client) = pair(&rustls::version::TLS13).await;
    for round in 0..3u8 {
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(&[round; 100]).await.expect("sends");
        client.flush().await.expect("flush");
        let mut got = [0u8; 100];
        server.read_exact(&mut got).await.expect("server follows");
        assert_eq!(got, [round; 100]);
        server.write_all(&[round + 1; 50]).await.expect("answers");
        server.flush().await.expect("flush");
        let mut back = [0u8; 50];
        client.read_exact(&mut back).await.expect("client follows");
        assert_eq!(back, [round + 1; 50]);
        assert_eq!(
            server.records.sealed_under_this_key(),
            1,
            "our answer went under a new key of ours, announced by our KeyUpdate"
        );
    }
}

/// A flipped bit in a record is an error that ends the connection, never bytes read.
#[tokio::test]
async fn a_tampered_record_is_refused() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (server, connector) = configs(version);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsStream::accept(tcp, server).await.expect("handshake")
        });
        // A relay that flips one bit of the first record the client sends after the handshake.
        let relay = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay_addr = relay.local_addr().expect("addr");
        let mut to_server = TcpStream::connect(addr).await.expect("connect");
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(relay_addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = connector
                .connect(name, tcp)
                .await
                .expect("client handshake");
            // Only once the server is done, so the record is alone in its read.
            ready.await.expect("go");
            tls.write_all(b"secret").await.expect("sends");
            tls.flush().await.expect("flush");
            tls
        });
        let (mut from_client, _) = relay.accept().await.expect("relay accept");
        let (mut a_read, mut a_write) = from_client.split();
        let (mut b_read, mut b_write) = to_server.split();
        // Relay the handshake until the server is done, then tamper with the rest.
        let mut server_side = None;
        let mut go = Some(go);
        let mut tampered = false;
        let mut accepted = Box::pin(accepted);
        let mut buf = vec![0u8; 65536];
        let mut back = vec![0u8; 65536];
        while !tampered {
            tokio::select! {
                done = &mut accepted, if server_side.is_none() => {
                    server_side = Some(done.expect("server task"));
                    if let Some(go) = go.take() {
                        let _ = go.send(());
                    }
                }
                n = a_read.read(&mut buf) => {
                    let n = n.expect("relay read");
                    assert!(n > 0, "client closed early");
                    if server_side.is_some() {
                        buf[n - 1] ^= 1;
                        tampered = true;
                    }
                    b_write.write_all(&buf[..n]).await.expect("relay write");
                }
                n = b_read.read(&mut back) => {
                    let n = n.expect("relay read back");
                    a_write.write_all(&back[..n]).await.expect("relay write back");
                }
            }
        }
        let mut server = server_side.expect("server handshake done");
        let mut got = [0u8; 6];
        let err = server.read_exact(&mut got).await.expect_err("tampered");
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{version:?}: {err}");
        drop(client);
    }
}

#[tokio::test]
async fn large_bodies_cross_both_ways_intact() {
    let (mut server, mut client) = pair(&rustls::version::TLS13).await;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.expect("client sends");
        client.flush().await.expect("client flush");
        let mut back = vec![0u8; sent.len()];
        client.read_exact(&mut back).await.expect("client reads");
        back
    });
    let mut got = vec![0u8; big.len()];
    server.read_exact(&mut got).await.expect("server reads");
    assert!(got == big, "the server read what the client sent");
    server.write_all(&got).await.expect("server sends");
    server.flush().await.expect("server flush");
    assert!(writer.await.expect("client task") == big, "and back");
}

#[tokio::test]
async fn close_notify_ends_reading_and_shutdown_sends_one() {
    let (mut server, mut client) = pair(&rustls::version::TLS13).await;
    client.shutdown().await.expect("client close_notify");
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).await.expect("clean end"), 0);
    server.shutdown().await.expect("server close_notify");
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .await
        .expect("a clean close, not a truncation");
    assert!(rest.is_empty());
    assert!(
        server.write_all(b"late").await.is_err(),
        "nothing after close"
    );
}

#[tokio::test]
async fn bytes_that_are_not_tls_fail_the_handshake() {
    let (server, _) = configs(&rustls::version::TLS13);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let err = match TlsStream::accept(accepted, server).await {
        Ok(_) => panic!("plaintext HTTP was taken for TLS"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    drop(tcp);
}

#[tokio::test]
async fn a_client_that_leaves_mid_handshake_is_an_end_not_a_hang() {
    let (server, _) = configs(&rustls::version::TLS13);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    drop(tcp);
    let err = match TlsStream::accept(accepted, server).await {
        Ok(_) => panic!("no handshake happened"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
}

/// Whatever arrives after the handshake, the record layer answers with an error or waits for
/// more: random records of every length, valid headers over random bodies, never a panic.
#[tokio::test]
async fn random_bytes_after_the_handshake_are_an_error_never_a_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut server, _client) = pair(version).await;
        for round in 0..2_000 {
            let len = rng.gen_range(0..600);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if round % 2 == 0 && bytes.len() >= 5 {
                // A plausible header, so the body reaches the AEAD and the parsers behind it.
                let body = (bytes.len() - 5) as u16;
                bytes[..5].copy_from_slice(&[23, 3, 3, (body >> 8) as u8, body as u8]);
            }
            let (mut plaintext, mut outgoing) = (Vec::new(), Vec::new());
            match server
                .records
                .open(&mut bytes, &mut plaintext, &mut outgoing)
            {
                Err(_) | Ok(Opened::More) => {}
                Ok(Opened::Closed) => panic!("{version:?}: random bytes closed the connection"),
            }
            assert!(plaintext.is_empty(), "{version:?}: random bytes decrypted");
        }
    }
}
