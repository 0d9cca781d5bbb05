//! Bad configuration exits 64 (EX_USAGE) before any port is bound, naming the setting.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ping-frontend"))
        .args(args)
        .env_remove("DP_NAMESPACE")
        .env_remove("TLS_CERT")
        .env_remove("TLS_KEY")
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
    let cases: [(&[&str], &str); 9] = [
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
