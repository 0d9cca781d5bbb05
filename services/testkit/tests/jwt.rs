//! AUTH_MODE=jwt: bearer tokens with an HS256 secret or ES256 keys from a JWKS file; issuer,
//! audience and expiry checked; the mailbox from a claim; only one's own mailbox.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use dp_proto::ping::PingStatus;
use dp_testkit::client::ping_body;
use dp_testkit::{Device, Env, Frontend};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);
const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn claims(email: &str, iss: &str, aud: &str, exp: u64) -> serde_json::Value {
    json!({"email": email, "iss": iss, "aud": aud, "exp": exp})
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

async fn ping_with(a: &Frontend, user: &str, token: &str) -> dp_testkit::HttpResponse {
    let mut device = Device::new(a.addr, user, "", "jwt-phone");
    device.bearer = Some(token.to_owned());
    tokio::time::timeout(5 * SECOND, device.ping(Some(&ping_body(1, &["1"]))))
        .await
        .expect("answered in time")
        .expect("answered")
}

#[tokio::test]
async fn hs256_tokens_are_checked_in_full() {
    let env = Env::new().await;
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--auth-mode", "jwt"),
            ("--jwt-secret", SECRET),
            ("--jwt-issuer", "https://idp.test"),
            ("--jwt-audience", "directpush"),
        ],
    )
    .await;
    let (iss, aud, later) = ("https://idp.test", "directpush", now() + 600);
    let good = hs256(&claims("Alice@Example.com", iss, aud, later), SECRET);
    let ok = ping_with(&a, "alice@example.com", &good).await;
    assert_eq!(ok.ping().status, PingStatus::Expired, "a valid token Pings");

    let refused = [
        (
            "wrong secret",
            hs256(
                &claims("alice@example.com", iss, aud, later),
                "another-secret-of-at-least-32-bytes",
            ),
        ),
        (
            "expired",
            hs256(&claims("alice@example.com", iss, aud, now() - 600), SECRET),
        ),
        (
            "wrong issuer",
            hs256(
                &claims("alice@example.com", "https://evil.test", aud, later),
                SECRET,
            ),
        ),
        (
            "wrong audience",
            hs256(
                &claims("alice@example.com", iss, "someone-else", later),
                SECRET,
            ),
        ),
        (
            "no mailbox claim",
            hs256(&json!({"iss": iss, "aud": aud, "exp": later}), SECRET),
        ),
        ("not a token", "not.a.token".to_owned()),
        (
            "not yet valid (nbf)",
            hs256(
                &json!({"email": "alice@example.com", "iss": iss, "aud": aud, "exp": later,
                        "nbf": now() + 600}),
                SECRET,
            ),
        ),
    ];
    for (what, token) in refused {
        let response = ping_with(&a, "alice@example.com", &token).await;
        assert_eq!(response.status, 401, "{what}");
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"ActiveSync\""),
            "{what}"
        );
    }
    let bobs = hs256(&claims("bob@example.com", iss, aud, later), SECRET);
    assert_eq!(
        ping_with(&a, "alice@example.com", &bobs).await.status,
        403,
        "only one's own mailbox"
    );
    // U+212A KELVIN SIGN folds to "k" in Unicode; a mailbox compares by ASCII case only.
    let kelvin = hs256(&claims("\u{212A}ate@example.com", iss, aud, later), SECRET);
    assert_eq!(
        ping_with(&a, "kate@example.com", &kelvin).await.status,
        403,
        "no Unicode case folding into another mailbox"
    );
    let mut basic = Device::new(a.addr, "alice@example.com", "pw", "p");
    assert_eq!(
        basic
            .ping(Some(&ping_body(1, &["1"])))
            .await
            .expect("answered")
            .status,
        401
    );
    env.cleanup().await;
}

#[tokio::test]
async fn es256_keys_from_a_jwks_file() {
    let env = Env::new().await;
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let raw = key.public_key_raw();
    assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        "kid": "k1", "alg": "ES256", "use": "sig"
    }]});
    let path = std::env::temp_dir().join(format!(
        "dp-jwks-{}-{:x}.json",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&path, jwks.to_string()).expect("writes JWKS");
    let path_text = path.to_string_lossy().into_owned();
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--auth-mode", "jwt"),
            ("--jwt-jwks-file", &path_text),
            ("--jwt-issuer", "idp"),
            ("--jwt-audience", "dp"),
            ("--jwt-mailbox-claim", "mbx"),
        ],
    )
    .await;
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("signing key");
    let body = json!({"mbx": "carol@example.com", "iss": "idp", "aud": "dp", "exp": now() + 600});
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let good = encode(&header, &body, &signing).expect("token");
    assert_eq!(
        ping_with(&a, "carol@example.com", &good)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );

    let mut unknown = Header::new(jsonwebtoken::Algorithm::ES256);
    unknown.kid = Some("k2".into());
    let unknown_kid = encode(&unknown, &body, &signing).expect("token");
    assert_eq!(
        ping_with(&a, "carol@example.com", &unknown_kid)
            .await
            .status,
        401,
        "unknown key id"
    );
    // Algorithm confusion: an HS256 token "signed" with the public key's bytes.
    let mut confused = Header::new(jsonwebtoken::Algorithm::HS256);
    confused.kid = Some("k1".into());
    let forged = encode(&confused, &body, &EncodingKey::from_secret(raw)).expect("token");
    assert_eq!(
        ping_with(&a, "carol@example.com", &forged).await.status,
        401,
        "alg must be the key's"
    );
    let _ = std::fs::remove_file(path);
    env.cleanup().await;
}

/// RS256 keys from a JWKS file (the RSA key made with the openssl CLI).
#[tokio::test]
async fn rs256_keys_from_a_jwks_file() {
    let env = Env::new().await;
    let dir = std::env::temp_dir().join(format!(
        "dp-rsa-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem_path = dir.join("rsa.pem");
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem_path)
        .arg("2048")
        .output()
        .expect("openssl runs (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem_path)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&modulus.stdout);
    let hex = text.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks =
        json!({"keys": [{"kty": "RSA", "n": b64(&n), "e": "AQAB", "kid": "r1", "alg": "RS256"}]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).expect("writes");
    let jwks_text = jwks_path.to_string_lossy().into_owned();
    let a = Frontend::start(
        &env,
        "a",
        &[
            ("--auth-mode", "jwt"),
            ("--jwt-jwks-file", &jwks_text),
            ("--jwt-issuer", "idp"),
            ("--jwt-audience", "dp"),
        ],
    )
    .await;
    let signing =
        EncodingKey::from_rsa_pem(&std::fs::read(&pem_path).expect("reads")).expect("RSA key");
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("r1".into());
    let token = encode(
        &header,
        &claims("dora@example.com", "idp", "dp", now() + 600),
        &signing,
    )
    .expect("token");
    assert_eq!(
        ping_with(&a, "dora@example.com", &token)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );
    let expired = encode(
        &header,
        &claims("dora@example.com", "idp", "dp", now() - 600),
        &signing,
    )
    .expect("token");
    assert_eq!(
        ping_with(&a, "dora@example.com", &expired).await.status,
        401
    );
    let _ = std::fs::remove_dir_all(dir);
    env.cleanup().await;
}
