//! Small runs of every scenario against a local cluster of the real binaries (a few thousand
//! devices, well under a minute each), so the tool never rots. The figures are not judged
//! here (BENCHMARKS.md holds the measured ones); correctness is: everyone parks, no change
//! is missed, a storm ends with everyone back, a carrier's devices settle below its timeout.

use std::path::{Path, PathBuf};

use std::time::Duration;

use dp_testkit::processes::{self, Process};
use dp_testkit::{wait_for, Env};
use serde_json::Value;

/// `loadtest <args>` against the test's namespace and database, writing to `out`.
fn command(env: &Env, args: &[&str], out: &Path) -> tokio::process::Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    let dir = bin.parent().expect("target directory");
    for service in ["ping-frontend", "mailbox-watcher"] {
        assert!(
            dir.join(service).exists(),
            "{service} is not built beside loadtest: run the workspace's tests (scripts/test.sh), \
             or cargo build --workspace first"
        );
    }
    let mut command = tokio::process::Command::new(bin);
    command
        .args(args)
        .args([
            "--database-url",
            &env.database_url,
            "--namespace",
            &env.namespace,
        ])
        .args(["--redis-url", &env.redis_url, "--nats-url", &env.nats_url])
        .arg("--out")
        .arg(out);
    command
}

fn out_dir(env: &Env) -> PathBuf {
    std::env::temp_dir().join(format!("lt-smoke-{}", env.namespace))
}

/// Runs `loadtest <args>` against a fresh namespace and database; returns its report.
async fn loadtest(env: &Env, args: &[&str]) -> Value {
    let out = out_dir(env);
    let output = command(env, args, &out)
        .output()
        .await
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "loadtest {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("report.json is JSON");
    for chart in ["parked.png", "memory.png"] {
        let png = std::fs::read(out.join(chart)).unwrap_or_else(|_| panic!("{chart} is drawn"));
        assert_eq!(&png[1..4], b"PNG");
    }
    if report["missed_wakes"].as_f64().is_some_and(|m| m > 0.0) {
        print_warnings(&out.join("logs"));
    }
    let _ = std::fs::remove_dir_all::<PathBuf>(out);
    report
}

/// The services' warnings and errors, for a run that missed a wake (its logs are removed with
/// the run's directory).
fn print_warnings(logs: &Path) {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            println!("{}: {line}", entry.file_name().to_string_lossy());
        }
    }
}

/// The Redis epochs recorded for the test's namespace.
async fn epochs(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM redis_epochs WHERE namespace = $1")
        .bind(&env.namespace)
        .fetch_one(&env.pool)
        .await
        .expect("counts epochs")
}

fn number(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn park_and_wake() {
    let env = Env::new().await;
    let report = loadtest(
        &env,
        &[
            "wake",
            "--local-frontends",
            "2",
            "--devices",
            "2000",
            "--rate",
            "2000",
            "--per-worker",
            "1000",
        ]
        .into_iter()
        .chain([
            "--changes-per-sec",
            "200",
            "--duration-secs",
            "4",
            "--sources",
            "4",
        ])
        .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(number(&report, "parked"), 2000.0);
    assert_eq!(number(&report, "workers"), 2.0);
    let sent = number(&report, "changes_sent");
    assert!(sent > 100.0, "changes were sent: {report:#}");
    assert_eq!(number(&report, "missed_wakes"), 0.0, "{report:#}");
    assert_eq!(
        report["wake_latency"]["count"].as_f64(),
        Some(sent),
        "every change heard"
    );
    assert!(report["frontend_memory"]["rss_bytes_per_parked_slope"]
        .as_f64()
        .is_some());
    assert!(number(&report, "ping_setups_per_frontend_cpu_sec") > 0.0);
    let each = report["frontend_memory_each"]
        .as_array()
        .expect("per-frontend memory");
    assert_eq!(each.len(), 2, "{report:#}");
    let parked_each: f64 = each.iter().filter_map(|f| f["parked"].as_f64()).sum();
    assert_eq!(parked_each, 2000.0, "each frontend's parked count adds up");
    assert_eq!(
        env.keys().await,
        Vec::<String>::new(),
        "the run leaves no Redis key"
    );
    assert!(!env.stream_exists("changes").await, "nor its change stream");
    assert!(!env.stream_exists("woken").await, "nor its woken stream");
    assert_eq!(epochs(&env).await, 0, "nor its Redis epochs");
    env.cleanup().await;
}

/// Proxy mode: devices enrol through the proxy, each wake is acknowledged by a Sync, no Ping
/// reaches the upstream, no change is missed.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_enrol_park_and_sync() {
    let env = Env::new().await;
    let args = [
        "proxy",
        "--local-frontends",
        "1",
        "--devices",
        "500",
        "--rate",
        "1000",
        "--changes-per-sec",
        "100",
        "--duration-secs",
        "3",
    ];
    let report = loadtest(&env, &args).await;
    assert_eq!(number(&report, "parked"), 500.0, "{report:#}");
    assert_eq!(report["enrolled"]["folder_syncs"].as_f64(), Some(500.0));
    assert_eq!(number(&report, "missed_wakes"), 0.0, "{report:#}");
    assert_eq!(number(&report, "pings_reaching_the_upstream"), 0.0);
    let wakes = number(&report, "wakes_read");
    assert!(wakes > 50.0, "{report:#}");
    assert_eq!(
        number(&report, "wakes_acknowledged_by_sync"),
        wakes,
        "{report:#}"
    );
    env.cleanup().await;
}

/// TLS ended at HAProxy in front of a plaintext frontend that reads the devices' addresses
/// from PROXY v2 headers: everyone parks through it, and its memory counts with the frontend's.
#[tokio::test(flavor = "multi_thread")]
async fn park_behind_a_tls_balancer() {
    let env = Env::new().await;
    let report = loadtest(
        &env,
        &[
            "park",
            "--local-frontends",
            "1",
            "--devices",
            "600",
            "--rate",
            "1000",
            "--tls",
            "--balancer",
            "tls",
            "--sources",
            "4",
        ],
    )
    .await;
    assert_eq!(number(&report, "parked"), 600.0, "{report:#}");
    let whole = report["frontend_memory"]["rss_mb"]
        .as_f64()
        .expect("memory");
    let frontend = report["frontend_memory_each"][0]["rss_mb"]
        .as_f64()
        .expect("the frontend's own");
    assert!(whole > frontend, "HAProxy's memory counts too: {report:#}");
    env.cleanup().await;
}

/// SIGTERM mid-run (here, with every device parked) ends the run as its end would: the
/// local cluster's processes and the workers are stopped, and its namespace is cleared. Without
/// the handler, the frontend, the watcher and the workers ran on after `loadtest` was gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_leaves_nothing_behind() {
    let env = Env::new().await;
    let out = out_dir(&env);
    let args = ["park", "--local-frontends", "1", "--devices", "200"];
    let held = [
        "--per-worker",
        "100",
        "--sources",
        "2",
        "--hold-secs",
        "600",
    ];
    let run = command(&env, &[&args[..], &held[..]].concat(), &out)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("loadtest starts");
    let pid = run.id().expect("a running loadtest");
    let started = wait_for(
        "the cluster, two workers and parked devices",
        Duration::from_secs(60),
        || async {
            let children = processes::children(pid);
            let named = |name: &str| children.iter().filter(|p| p.name == name).count();
            let all = named("ping-frontend") == 1
                && named("mailbox-watcher") == 1
                && named("loadtest") == 2;
            (all && !env.keys().await.is_empty()).then_some(children)
        },
    )
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output())
        .await
        .expect("loadtest exits after SIGTERM")
        .expect("its status");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    wait_for(
        "every process the run started to end",
        Duration::from_secs(10),
        || async {
            let left: Vec<&Process> = started
                .iter()
                .filter(|p| processes::running(p.pid))
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;
    assert_eq!(
        env.keys().await,
        Vec::<String>::new(),
        "no Redis key is left"
    );
    assert!(!env.stream_exists("changes").await, "nor the change stream");
    assert_eq!(epochs(&env).await, 0, "nor its Redis epoch");
    let _ = std::fs::remove_dir_all(out);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storm() {
    let env = Env::new().await;
    // What an interrupted run would leave: the next run starts without it.
    let stale = format!("{}:stale", env.namespace);
    let () = redis::cmd("SET")
        .arg(&stale)
        .arg("from an earlier run")
        .query_async(&mut env.redis().await)
        .await
        .expect("SET");
    // An earlier incarnation on record would make every device hear its folders again.
    sqlx::query("INSERT INTO redis_epochs (namespace, epoch) VALUES ($1, 'stale')")
        .bind(&env.namespace)
        .execute(&env.pool)
        .await
        .expect("INSERT");
    let report = loadtest(
        &env,
        &[
            "storm",
            "--keep-state",
            "--local-frontends",
            "3",
            "--devices",
            "1500",
            "--rate",
            "3000",
        ]
        .into_iter()
        .chain([
            "--changes-per-sec",
            "100",
            "--calm-secs",
            "1",
            "--jitter-ms",
            "1000",
        ])
        .collect::<Vec<_>>(),
    )
    .await;
    assert!(number(&report, "displaced_devices") > 0.0, "{report:#}");
    assert_eq!(number(&report, "parked_again"), 1500.0, "{report:#}");
    assert!(number(&report, "all_parked_again_secs") > 0.0);
    assert_eq!(number(&report, "missed_wakes"), 0.0, "{report:#}");
    let keys = env.keys().await;
    assert!(!keys.contains(&stale), "cleared before the run");
    assert!(!keys.is_empty(), "--keep-state keeps the run's keys");
    assert!(env.stream_exists("changes").await, "and its streams");
    assert_eq!(
        epochs(&env).await,
        1,
        "only this run's Redis epoch is recorded"
    );
    env.cleanup().await;
}

/// A TLS storm with the frontends sharing TLS_TICKET_KEYS: every displaced device resumes on a
/// survivor with the ticket the dead frontend gave it; none needs a full handshake.
#[tokio::test(flavor = "multi_thread")]
async fn tls_storm_resumes_with_shared_ticket_keys() {
    let env = Env::new().await;
    let report = loadtest(
        &env,
        &[
            "storm",
            "--local-frontends",
            "2",
            "--devices",
            "600",
            "--rate",
            "2000",
            "--tls",
            "--shared-ticket-keys",
        ]
        .into_iter()
        .chain([
            "--changes-per-sec",
            "50",
            "--calm-secs",
            "1",
            "--jitter-ms",
            "500",
        ])
        .collect::<Vec<_>>(),
    )
    .await;
    let displaced = number(&report, "displaced_devices");
    assert!(displaced > 0.0, "{report:#}");
    assert_eq!(number(&report, "parked_again"), 600.0, "{report:#}");
    let handshakes = &report["storm_tls_handshakes"];
    assert_eq!(handshakes["full"].as_f64(), Some(0.0), "{report:#}");
    assert!(
        handshakes["resumed"].as_f64().unwrap_or(0.0) >= displaced,
        "{report:#}"
    );
    assert_eq!(number(&report, "missed_wakes"), 0.0, "{report:#}");
    env.cleanup().await;
}

/// Redis restarted without persistence, NATS restarted, a frontend killed, on private stores
/// behind passwords: nothing missed, the loss seen, the duplicates it cost counted.
#[tokio::test(flavor = "multi_thread")]
async fn chaos() {
    let env = Env::new().await;
    let report = loadtest(
        &env,
        &[
            "chaos",
            "--local-frontends",
            "2",
            "--devices",
            "1000",
            "--rate",
            "2000",
        ]
        .into_iter()
        .chain([
            "--changes",
            "3000",
            "--changes-per-sec",
            "300",
            "--redis-persistence",
            "false",
            "--jitter-ms",
            "1000",
            "--window-secs",
            "15",
        ])
        .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(number(&report, "missed_wakes"), 0.0, "{report:#}");
    // The rate is not judged here (a loaded machine sends fewer), only that changes went out.
    assert!(number(&report, "changes_sent") > 300.0, "{report:#}");
    assert!(
        number(&report, "redis_state_losses_seen") >= 1.0,
        "{report:#}"
    );
    assert!(number(&report, "duplicate_wakes") >= 0.0);
    assert_eq!(number(&report, "parked_after"), 1000.0, "{report:#}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn carrier() {
    let env = Env::new().await;
    // A minute is a quarter second: heartbeats 4, 8, 12 and 16 minutes against a 13-minute
    // carrier timeout; devices must settle on 12.
    let report = loadtest(
        &env,
        &[
            "carrier",
            "--local-frontends",
            "1",
            "--devices",
            "300",
            "--rate",
            "1000",
        ]
        .into_iter()
        .chain([
            "--minute-secs",
            "0.25",
            "--duration-min",
            "56",
            "--changes-per-sec",
            "60",
            // A quarter-second minute would leave the devices a quarter-second grace: one
            // stall of the shared CI machine and they give up on Pings that were answered.
            "--grace-secs",
            "1",
        ])
        .collect::<Vec<_>>(),
    )
    .await;
    let convergence = &report["convergence"];
    assert_eq!(
        convergence["final_below_carrier_timeout"].as_f64(),
        Some(300.0),
        "{report:#}"
    );
    assert_eq!(
        convergence["final_heartbeat_min_counts"]["12"].as_f64(),
        Some(300.0)
    );
    assert!(number(&report, "silently_dropped_connections") >= 300.0);
    assert_eq!(number(&report, "missed_wakes"), 0.0, "{report:#}");
    env.cleanup().await;
}
