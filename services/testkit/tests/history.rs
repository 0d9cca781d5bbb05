//! Heartbeat history: a row for every outcome, and Pings served with the database gone
//! (issue test 10).

use std::net::SocketAddr;
use std::time::Duration;

use dp_proto::ping::PingStatus;
use dp_testkit::client::ping_body;
use dp_testkit::{wait_for, Device, Env, Frontend, Proxy, Watcher};

const SECOND: Duration = Duration::from_secs(1);

fn addr_of(url: &str, scheme: &str) -> SocketAddr {
    let rest = url.trim_start_matches(scheme);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap_or(host);
    host.parse().expect("a URL with ip:port")
}

#[tokio::test]
async fn one_row_per_outcome() {
    let env = Env::new().await;
    env.account("mia", "pw").await;
    let redis_proxy = Proxy::start(addr_of(&env.redis_url, "redis://")).await;
    let redis_via_proxy = format!("redis://{}", redis_proxy.addr);
    let mut a = Frontend::start(&env, "a", &[("--redis-timeout-ms", "500")]).await;
    let flaky = Frontend::start(
        &env,
        "flaky",
        &[
            ("--redis-url", &redis_via_proxy),
            ("--redis-timeout-ms", "500"),
        ],
    )
    .await;
    let w = Watcher::start(&env, "w", &[]).await;

    // expired
    let mut expired = Device::new(a.addr, "mia", "pw", "expired");
    assert_eq!(
        expired
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );

    // changed
    let mut changed = Device::new(a.addr, "mia", "pw", "changed");
    let task = tokio::spawn(async move {
        changed
            .ping_within(Some(&ping_body(30, &["9"])), 10 * SECOND)
            .await
    });
    env.wait_parked("mia", "changed", "a", None).await;
    w.change(&env, "mia", &["9"]).await;
    assert_eq!(task.await.expect("task").ping().status, PingStatus::Changes);

    // superseded
    let mut old = Device::new(a.addr, "mia", "pw", "twice");
    let task = tokio::spawn(async move {
        old.ping_within(Some(&ping_body(30, &["1"])), 10 * SECOND)
            .await
    });
    let first = env.wait_parked("mia", "twice", "a", None).await;
    let mut new = Device::new(a.addr, "mia", "pw", "twice");
    let newer = tokio::spawn(async move {
        new.ping_within(Some(&ping_body(1, &["1"])), 10 * SECOND)
            .await
    });
    env.wait_parked("mia", "twice", "a", Some(&first)).await;
    assert_eq!(task.await.expect("task").ping().status, PingStatus::Expired);
    assert_eq!(
        newer.await.expect("task").ping().status,
        PingStatus::Expired
    );

    // client_gone
    let mut leaver = Device::new(a.addr, "mia", "pw", "leaver");
    let task = tokio::spawn(async move { leaver.ping(Some(&ping_body(30, &["1"]))).await });
    env.wait_parked("mia", "leaver", "a", None).await;
    task.abort();
    let _ = task.await;

    // rejected (Status 4)
    let mut broken = Device::new(a.addr, "mia", "pw", "broken");
    let request = broken.ping_request_with(b"\x03\x01\x6a\x00\x00\x0d\x05\x05");
    assert_eq!(
        broken.send(&request).await.expect("answered").ping().status,
        PingStatus::SyntaxError
    );

    // error (Status 8): Redis unreachable from the flaky pod, which answers instead of hanging.
    redis_proxy.cut().await;
    let mut unlucky = Device::new(flaky.addr, "mia", "pw", "unlucky");
    let answer = unlucky
        .ping_within(Some(&ping_body(30, &["1"])), 10 * SECOND)
        .await
        .ping();
    assert_eq!(answer.status, PingStatus::ServerError);

    // drained
    let mut drained = Device::new(a.addr, "mia", "pw", "drained");
    let task = tokio::spawn(async move {
        drained
            .ping_within(Some(&ping_body(30, &["1"])), 20 * SECOND)
            .await
    });
    env.wait_parked("mia", "drained", "a", None).await;
    let stopper = tokio::task::spawn_blocking(move || {
        a.stop();
        a
    });
    assert_eq!(task.await.expect("task").ping().status, PingStatus::Expired);
    stopper.await.expect("frontend stopped");

    let expected = [
        ("expired", "expired", Some(1)),
        ("changed", "changed", Some(2)),
        ("twice", "superseded", Some(1)),
        ("leaver", "client_gone", None),
        ("broken", "rejected", Some(4)),
        ("unlucky", "error", Some(8)),
        ("drained", "drained", Some(1)),
    ];
    let rows = wait_for("every outcome in the history", 15 * SECOND, || async {
        let rows = env.history().await;
        expected
            .iter()
            .all(|(device, outcome, status)| {
                rows.iter().any(|(d, o, s)| {
                    d == device && o == outcome && s.map(|s| s as i32) == status.map(|s: i32| s)
                })
            })
            .then_some(rows)
    })
    .await;
    assert!(rows.len() >= expected.len());
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE mailbox = 'mia'")
        .fetch_one(&env.pool)
        .await
        .expect("devices");
    assert_eq!(devices, 7, "one devices row per device");
    env.cleanup().await;
}

/// With the database unreachable, Pings of devices whose credentials are cached are served as
/// usual, and the history rows that cannot be written are counted as dropped.
#[tokio::test]
async fn pings_are_served_while_the_database_is_down() {
    let env = Env::new().await;
    env.account("noah", "pw").await;
    let pg = Proxy::start(addr_of(&env.database_url, "postgres://")).await;
    let database = env
        .database_url
        .rsplit_once('/')
        .map(|(_, db)| db)
        .unwrap_or_default();
    let via_proxy = format!("postgres://postgres@{}/{database}", pg.addr);
    let a = Frontend::start(&env, "a", &[("--database-url", &via_proxy)]).await;
    let mut phone = Device::new(a.addr, "noah", "pw", "p");

    // Credentials verified (and cached) while the database is up.
    assert_eq!(
        phone
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping()
            .status,
        PingStatus::Expired
    );
    wait_for("the first row written", 10 * SECOND, || async {
        (a.metric("dp_frontend_history_rows_written_total").await >= 1.0).then_some(())
    })
    .await;

    pg.cut().await;
    for _ in 0..3 {
        let answer = phone
            .ping_within(Some(&ping_body(1, &["1"])), 5 * SECOND)
            .await
            .ping();
        assert_eq!(answer.status, PingStatus::Expired);
    }
    wait_for("the rows to be counted as dropped", 20 * SECOND, || async {
        (a.metric("dp_frontend_history_rows_dropped_total").await >= 3.0).then_some(())
    })
    .await;
    // A device whose credentials are not cached gets 503 + Retry-After, not a hang.
    let mut stranger = Device::new(a.addr, "noah", "other-password", "q");
    let refused = stranger
        .ping_within(Some(&ping_body(1, &["1"])), 10 * SECOND)
        .await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    env.cleanup().await;
}

/// Daily partitions are created ahead and dropped past the retention.
#[tokio::test]
async fn partitions_are_created_and_expired() {
    let env = Env::new().await;
    let old = "ping_history_20000101";
    sqlx::query(&format!(
        "CREATE TABLE {old} PARTITION OF ping_history FOR VALUES FROM ('2000-01-01') TO ('2000-01-02')"
    ))
    .execute(&env.pool)
    .await
    .expect("old partition");
    dp_db::history::maintain_partitions(&env.pool, Some(30))
        .await
        .expect("maintained");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'ping_history' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .expect("partitions");
    assert!(
        !names.iter().any(|n| n == old),
        "expired partition dropped: {names:?}"
    );
    let today: String =
        sqlx::query_scalar("SELECT 'ping_history_' || to_char(current_date + 2, 'YYYYMMDD')")
            .fetch_one(&env.pool)
            .await
            .expect("name");
    assert!(
        names.contains(&today),
        "partitions two days ahead: {names:?}"
    );
    env.cleanup().await;
}

/// Devices unseen for the history's retention are forgotten with it; a flood of made-up
/// DeviceIds does not stay in the table.
#[tokio::test]
async fn devices_unseen_for_the_retention_are_forgotten() {
    let env = Env::new().await;
    for (device, days) in [("old", 40), ("recent", 2)] {
        sqlx::query(
            "INSERT INTO devices (mailbox, device_id, device_type, first_seen, last_seen)
             VALUES ('nina', $1, 'Phone', now() - make_interval(days => $2), now() - make_interval(days => $2))",
        )
        .bind(device)
        .bind(days)
        .execute(&env.pool)
        .await
        .expect("device row");
    }
    dp_db::history::maintain_partitions(&env.pool, Some(30))
        .await
        .expect("maintained");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT device_id FROM devices WHERE mailbox = 'nina'")
            .fetch_all(&env.pool)
            .await
            .expect("devices");
    assert_eq!(left, ["recent"]);
    env.cleanup().await;
}
