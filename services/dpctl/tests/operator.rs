//! dpctl against a real cluster: accounts, a change through the ingest API, a device's state.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dp_proto::ping::PingStatus;
use dp_testkit::client::ping_body;
use dp_testkit::{Device, Env, Frontend, Watcher};

fn dpctl(env: &Env, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpctl"))
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env("REDIS_URL", &env.redis_url)
        .env("REDIS_MODE", &env.redis_mode)
        .env("DP_NAMESPACE", &env.namespace)
        .env("INGEST_TOKEN", &env.ingest_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dpctl starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writes");
    child.wait_with_output().expect("dpctl finishes")
}

fn text(output: &Output) -> String {
    assert!(
        output.status.success(),
        "dpctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn accounts_change_and_device_show() {
    let env = Env::new().await;
    let added = dpctl(&env, &["accounts", "add", "Olivia@Example.com"], "s3cret\n");
    assert!(text(&added).contains("olivia@example.com"));
    let listed = text(&dpctl(&env, &["accounts", "list"], ""));
    assert!(listed.contains("olivia@example.com\tenabled"), "{listed}");

    let a = Frontend::start(&env, "a", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(a.addr, "olivia@example.com", "s3cret", "phone");
    let parked = tokio::spawn(async move {
        let response = phone
            .ping_within(Some(&ping_body(30, &["5"])), Duration::from_secs(10))
            .await;
        (phone, response)
    });
    env.wait_parked("olivia@example.com", "phone", "a", None)
        .await;

    let show = text(&dpctl(
        &env,
        &["device", "show", "olivia@example.com", "phone"],
        "",
    ));
    assert!(show.contains("owner        pod a"), "{show}");
    assert!(show.contains("\"h\":30"), "cached parameters shown: {show}");

    let url = format!("http://{}", w.addr);
    let changed = dpctl(
        &env,
        &["change", "olivia@example.com", "5", "--ingest-url", &url],
        "",
    );
    assert!(text(&changed).contains("accepted"));
    let (_, response) = parked.await.expect("device task");
    assert_eq!(response.ping().status, PingStatus::Changes);

    let show = dp_testkit::wait_for("the history row", Duration::from_secs(10), || async {
        let show = text(&dpctl(
            &env,
            &["device", "show", "olivia@example.com", "phone"],
            "",
        ));
        show.contains("changed").then_some(show)
    })
    .await;
    assert!(
        show.contains("5: 1 / 1"),
        "version reported to the device: {show}"
    );

    let refused = dpctl(
        &env,
        &[
            "change",
            "olivia@example.com",
            "5",
            "--ingest-url",
            &url,
            "--token",
            "wrong-token-wrong-token",
        ],
        "",
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    text(&dpctl(
        &env,
        &["accounts", "disable", "olivia@example.com"],
        "",
    ));
    let listed = text(&dpctl(&env, &["accounts", "list"], ""));
    assert!(listed.contains("olivia@example.com\tdisabled"), "{listed}");
    let missing = dpctl(&env, &["accounts", "disable", "nobody"], "");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account named"));
    env.cleanup().await;
}

/// What the compose stack's one-shot services and the image's health check run: a password
/// from a named variable (no shell to pipe one in), and `dpctl health`.
#[tokio::test]
async fn password_from_the_environment_and_health() {
    let env = Env::new().await;
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_dpctl"))
            .args(args)
            .env("DATABASE_URL", &env.database_url)
            .envs(vars.iter().copied())
            .output()
            .expect("dpctl runs")
    };
    let add = [
        "accounts",
        "add",
        "demo@example.com",
        "--password-env",
        "DEMO_PASSWORD",
    ];
    let added = run(&add, &[("DEMO_PASSWORD", "demo-pw")]);
    assert!(text(&added).contains("demo@example.com"));
    let (hash, disabled) = dp_db::accounts::credentials(&env.pool, "demo@example.com")
        .await
        .expect("query")
        .expect("the account exists");
    assert!(!disabled && dp_db::accounts::verify_password(&hash, "demo-pw"));
    let unset = run(&add, &[]);
    assert!(!unset.status.success());
    assert!(String::from_utf8_lossy(&unset.stderr).contains("DEMO_PASSWORD is not set"));

    let a = Frontend::start(&env, "a", &[]).await;
    let healthy = run(&["health", &format!("http://{}/healthz", a.admin)], &[]);
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    let missing = run(
        &["health", &format!("http://{}/nothing-here", a.admin)],
        &[],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    env.cleanup().await;
}
