//! Bad configuration exits 64 (EX_USAGE) before any port is bound, naming the setting.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ping-frontend"))
        .args(args)
        .env_remove("DP_NAMESPACE")
        .env_remove("TLS_CERT")
        .env_remove("TLS_KEY")
        .env_remove("TLS_TICKET_KEYS")
        .env_remove("WAKE_LISTEN_ADDR")
        .env_remove("WAKE_ADVERTISE_HOST")
        .output()
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_exit_64_and_name_the_setting() {
    let garbage = std::env::temp_dir().join(format!("dp-not-a-cert-{}.pem", std::process::id()));
    std::fs::write(&garbage, "not a certificate").expect("writes");
    let garbage = garbage.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 12] = [
        (&["--auth-mode", "jwt"], "JWT_SECRET and JWT_JWKS_FILE"),
        (
            &[
                "--auth-mode",
                "jwt",
                "--jwt-secret",
                "0123456789abcdef0123456789abcdef",
            ],
            "JWT_ISSUER",
        ),
        (&["--auth-mode", "ldap"], "AUTH_MODE"),
        (&["--namespace", "a.b"], "DP_NAMESPACE"),
        (&["--listen-addr", "nowhere"], "LISTEN_ADDR"),
        (
            &["--min-heartbeat", "100", "--max-heartbeat", "50"],
            "MIN_HEARTBEAT",
        ),
        (&["--tls-cert", "/nonexistent.pem"], "TLS_CERT/TLS_KEY"),
        (
            &["--tls-cert", &garbage, "--tls-key", &garbage],
            "no certificate",
        ),
        (&["--log-format", "xml"], "LOG_FORMAT"),
        (
            &["--wake-listen-addr", "0.0.0.0:8082"],
            "WAKE_ADVERTISE_HOST",
        ),
        (&["--wake-listen-addr", "port 8082"], "WAKE_LISTEN_ADDR"),
        (
            &["--wake-advertise-host", "10.0.0.7"],
            "WAKE_ADVERTISE_HOST",
        ),
    ];
    for (args, named) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} should name {named}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(garbage);
}

/// Ticket keys are read before binding too: an unusable file names TLS_TICKET_KEYS and the
/// line, never a key's bytes.
#[test]
fn bad_ticket_keys_exit_64() {
    let dir = std::env::temp_dir().join(format!("dp-ticket-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert, key, keys) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("keys"));
    std::fs::write(&cert, issued.cert.pem()).expect("writes");
    std::fs::write(&key, issued.key_pair.serialize_pem()).expect("writes");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (cert, key, keys) = (path(&cert), path(&key), path(&keys));
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    for (text, named) in [
        ("c2hvcnQ=\n", "line 1: 5 bytes"),
        ("# nothing\n", "no key in it"),
        ("\n???\n", "line 2: not base64"),
    ] {
        std::fs::write(&keys, text).expect("writes");
        let (code, stderr) = run(&[&tls[..], &["--tls-ticket-keys", keys.as_str()]].concat());
        assert_eq!(code, Some(64), "{text:?}: {stderr}");
        assert!(stderr.contains("TLS_TICKET_KEYS"), "{stderr}");
        assert!(
            stderr.contains(named),
            "{text:?} should say {named}: {stderr}"
        );
    }
    let (code, stderr) = run(&["--tls-ticket-keys", keys.as_str()]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("needs TLS_CERT and TLS_KEY"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
