//! Issue 12, items 1 and 9, on private stores behind passwords (as compose and the chart run
//! them): a round of changes before and after a Redis restart (with its append-only file, and
//! without persistence), a NATS restart and a frontend's death. Every device hears every round
//! (I1); the duplicates the failures cause are counted and printed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dp_keyspace::Keyspace;
use dp_proto::ping::PingStatus;
use dp_testkit::client::ping_body;
use dp_testkit::stores::{LocalNats, LocalNatsCluster, LocalRedis, LocalRedisCluster};
use dp_testkit::{wait_for, Device, Env, Frontend, Watcher};
use tokio::time::Instant;

const MAILBOX: &str = "chaos@example.com";
const DEVICES: [&str; 3] = ["d0", "d1", "d2"];
const SECOND: Duration = Duration::from_secs(1);

/// When each device read a Status 2 (and for which folders).
type Heard = Arc<Mutex<Vec<(usize, Instant)>>>;

#[tokio::test(flavor = "multi_thread")]
async fn changes_survive_restarts_of_stores_behind_passwords() {
    chaos(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_survive_a_redis_restart_without_persistence() {
    chaos(false).await;
}

async fn chaos(persistence: bool) {
    let mut redis = LocalRedis::start("redis-s3cret", persistence)
        .await
        .expect("a private redis-server");
    let mut nats = LocalNats::start("directpush", "nats-s3cret")
        .await
        .expect("a private nats-server");
    let mut env = Env::new().await;
    env.redis_url = redis.url();
    env.nats_url = nats.url();
    env.account(MAILBOX, "pw").await;
    let mut a = Frontend::start(&env, "a", &[]).await;
    let b = Frontend::start(&env, "b", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;
    let heard: Heard = Arc::default();
    let phones = phones(&a, &b, &heard);

    let mut changes = 0;
    round(&env, &w, &heard, "with everything up", &mut changes).await;
    redis.restart().await.expect("redis-server restarts");
    round(&env, &w, &heard, "after a Redis restart", &mut changes).await;
    nats.restart().await.expect("nats-server restarts");
    round(&env, &w, &heard, "after a NATS restart", &mut changes).await;
    a.kill();
    round(&env, &w, &heard, "after a frontend died", &mut changes).await;

    let answers = heard.lock().map(|h| h.len()).unwrap_or(0);
    let needed = changes * DEVICES.len();
    eprintln!(
        "persistence {persistence}: {changes} changes, {answers} Status 2 answers for {needed} \
         needed: {} duplicates",
        answers.saturating_sub(needed)
    );
    assert!(answers >= needed);
    if persistence {
        assert_eq!(b.metric("dp_frontend_redis_state_losses_total").await, 0.0);
    } else {
        assert!(b.metric("dp_frontend_redis_state_losses_total").await >= 1.0);
    }
    for phone in phones {
        phone.abort();
    }
    env.cleanup().await;
}

/// Issue 15: a three-node NATS cluster with the change streams replicated three times
/// (`CHANGES_REPLICAS=3`, `NATS_URL` listing the nodes). A node dies with changes coming (the
/// services connected to it move to the others), comes back, and another dies: every device
/// hears every round.
#[tokio::test(flavor = "multi_thread")]
async fn changes_survive_the_loss_of_a_nats_node() {
    let mut nats = LocalNatsCluster::start()
        .await
        .expect("a three-node NATS cluster");
    let mut env = Env::new().await;
    env.nats_url = nats.url();
    env.account(MAILBOX, "pw").await;
    let a = Frontend::start(&env, "a", &[]).await;
    let b = Frontend::start(&env, "b", &[]).await;
    let w = Watcher::start(&env, "w", &[("--changes-replicas", "3")]).await;
    let heard: Heard = Arc::default();
    let phones = phones(&a, &b, &heard);
    let mut changes = 0;
    round(&env, &w, &heard, "with three NATS nodes", &mut changes).await;
    let mut stream = async_nats::jetstream::new(env.nats().await)
        .get_stream(format!("{}_changes", env.namespace))
        .await
        .expect("the change stream");
    let info = stream.info().await.expect("its settings");
    assert_eq!(
        info.config.num_replicas, 3,
        "CHANGES_REPLICAS reached the stream"
    );
    nats.kill(0).await;
    round(&env, &w, &heard, "after NATS node 0 died", &mut changes).await;
    nats.restart(0).await.expect("node 0 back");
    nats.kill(1).await;
    round(&env, &w, &heard, "after NATS node 1 died", &mut changes).await;
    let answers = heard.lock().map(|h| h.len()).unwrap_or(0);
    eprintln!(
        "NATS cluster: {changes} changes, {answers} Status 2 answers for {} needed",
        changes * DEVICES.len()
    );
    assert!(answers >= changes * DEVICES.len());
    for phone in phones {
        phone.abort();
    }
    env.cleanup().await;
}

/// Issue 15: the Redis Cluster primary holding the mailbox's slot is killed while the devices'
/// Pings are parked and changes keep coming. Its replica is promoted, every device hears the
/// changes made meanwhile, the frontends and the watcher go on without a restart, and the old
/// primary comes back as a replica. Prints the time without wakes and the duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_primary_failover_loses_no_change() {
    let mut redis = LocalRedisCluster::start("cluster-s3cret")
        .await
        .expect("a six-node Redis Cluster");
    let env = on_redis_cluster(&redis).await;
    let a = Frontend::start(&env, "a", &[]).await;
    let b = Frontend::start(&env, "b", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;
    let heard: Heard = Arc::default();
    let phones = phones(&a, &b, &heard);
    let mut changes = 0;
    round(&env, &w, &heard, "on the Redis Cluster", &mut changes).await;

    let key = Keyspace::new(&env.namespace).versions(MAILBOX);
    let primary = redis.primary_of(&key).await.expect("the mailbox's primary");
    let killed = Instant::now();
    redis.kill(primary).await;
    // A change every 100 ms until the replica is promoted.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let mut last_sent = killed;
    let promoted = loop {
        pace.tick().await;
        let body = serde_json::json!({"mailbox": MAILBOX, "folders": ["5"]});
        if w.ingest(&env, &body).await.status == 202 {
            last_sent = Instant::now();
        }
        if redis.primary_of(&key).await.is_ok_and(|p| p != primary) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no replica promoted within 30 s"
        );
    };
    wait_for(
        "every device to hear the changes made during the failover",
        Duration::from_secs(30),
        || async {
            let h = heard.lock().ok()?;
            (0..DEVICES.len())
                .all(|i| h.iter().any(|&(d, at)| d == i && at >= last_sent))
                .then_some(())
        },
    )
    .await;
    let first_after = heard
        .lock()
        .ok()
        .and_then(|h| {
            h.iter()
                .filter(|(_, at)| *at >= killed)
                .map(|(_, at)| *at)
                .min()
        })
        .map(|at| at.duration_since(killed));
    eprintln!("failover: replica promoted {promoted:?} after the kill; first wake after it {first_after:?}");
    let before = heard.lock().map(|h| h.len()).unwrap_or(0);
    round(&env, &w, &heard, "after the failover", &mut changes).await;
    redis
        .restart(primary)
        .await
        .expect("the old primary rejoins");
    round(
        &env,
        &w,
        &heard,
        "with the old primary back as a replica",
        &mut changes,
    )
    .await;
    let answers = heard.lock().map(|h| h.len()).unwrap_or(0) - before;
    eprintln!(
        "after the failover: 2 rounds, {answers} Status 2 answers for {} needed",
        2 * DEVICES.len()
    );
    for frontend in [&a, &b] {
        assert_eq!(
            frontend
                .metric("dp_frontend_redis_state_losses_total")
                .await,
            0.0
        );
    }
    for phone in phones {
        phone.abort();
    }
    env.cleanup().await;
}

/// Issue 15, I1 across a failover: a bump the replica never received (its replication stream
/// held back) is not acknowledged to JetStream, so once the replica is promoted without it the
/// change is delivered again and reported. With `REDIS_WAIT_REPLICAS=0` the change is acked,
/// lost with the primary, and this device answers Status 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_bump_lost_with_its_primary_is_made_again_on_the_promoted_replica() {
    let mut redis = LocalRedisCluster::start("cluster-s3cret")
        .await
        .expect("a six-node Redis Cluster");
    let env = on_redis_cluster(&redis).await;
    let a = Frontend::start(&env, "a", &[]).await;
    let w = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(a.addr, MAILBOX, "pw", "d0");
    // A first Ping sets the device's baseline; between Pings nobody is there to wake.
    let first = phone
        .ping_within(Some(&ping_body(1, &["5"])), 10 * SECOND)
        .await;
    assert_eq!(first.ping().status, PingStatus::Expired);

    let key = Keyspace::new(&env.namespace).versions(MAILBOX);
    let primary = redis.primary_of(&key).await.expect("the mailbox's primary");
    let held = redis
        .hold_replication(primary)
        .await
        .expect("replication held back");
    let body = serde_json::json!({"mailbox": MAILBOX, "folders": ["5"]});
    assert_eq!(w.ingest(&env, &body).await.status, 202);
    wait_for("the bump on the primary alone", 10 * SECOND, || async {
        let version = redis.hget_on(primary, &key, "5").await.ok()??;
        (version != "0").then_some(())
    })
    .await;
    redis.kill(primary).await;
    wait_for("a replica promoted", 30 * SECOND, || async {
        redis.primary_of(&key).await.ok().filter(|p| *p != primary)
    })
    .await;
    drop(held);

    // Until the frontend's client has found the new primary, a Ping may answer Status 8; the
    // phone tries again, as phones do.
    let deadline = Instant::now() + 40 * SECOND;
    let answer = loop {
        let answer = phone
            .ping_within(Some(&ping_body(30, &["5"])), 40 * SECOND)
            .await
            .ping();
        if answer.status != PingStatus::ServerError || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (answer.status, answer.folders),
        (PingStatus::Changes, vec!["5".to_owned()]),
        "the change bumped on the lost primary alone is reported"
    );
    assert!(w.metric("dp_watcher_dispatch_errors_total").await >= 1.0);
    env.cleanup().await;
}

/// Issue 15, I1 for the IMAP source across a failover: the mark that tells the IMAP watcher a
/// mailbox has a parked Ping, made on a primary whose replica never received it, is made again
/// on the promoted replica while the Ping stays parked. With `REDIS_WAIT_REPLICAS=0` the mark is
/// taken as made, is lost with the primary, and the mailbox stays unwatched: its mail would
/// wake nobody.
#[tokio::test(flavor = "multi_thread")]
async fn a_pinged_mark_lost_with_its_primary_is_made_again_on_the_promoted_replica() {
    let mut redis = LocalRedisCluster::start("cluster-s3cret")
        .await
        .expect("a six-node Redis Cluster");
    let env = on_redis_cluster(&redis).await;
    let keys = Keyspace::new(&env.namespace);
    let index = keys.pinged();
    let held_node = redis.primary_of(&index).await.expect("the index's primary");
    // A mailbox on another primary: its claim must not wait on the held replication.
    let mut mailbox = None;
    for i in 0..64 {
        let candidate = format!("imap{i}@example.com");
        let node = redis.primary_of(&keys.versions(&candidate)).await;
        if node.is_ok_and(|node| node != held_node) {
            mailbox = Some(candidate);
            break;
        }
    }
    let mailbox = mailbox.expect("a mailbox on another primary");
    env.account(&mailbox, "pw").await;
    // An IMAP watcher is running, as far as the frontends can tell.
    let mut conn = env.redis().await;
    let _: i64 = redis::cmd("HSET")
        .arg(keys.imap_replicas())
        .arg("i")
        .arg(u64::MAX / 2)
        .query_async(&mut conn)
        .await
        .expect("an IMAP replica announced");
    // Started after: a frontend looks whether an IMAP watcher runs before it serves.
    let a = Frontend::start(&env, "a", &[]).await;

    let held = redis
        .hold_replication(held_node)
        .await
        .expect("replication held back");
    let mut phone = Device::new(a.addr, &mailbox, "pw", "d0");
    let parked = tokio::spawn(async move {
        phone
            .ping_within(Some(&ping_body(300, &["5"])), 300 * SECOND)
            .await
    });
    wait_for("the mark on the primary alone", 20 * SECOND, || async {
        redis.zscore_on(held_node, &index, &mailbox).await.ok()?
    })
    .await;
    redis.kill(held_node).await;
    wait_for("a replica promoted", 30 * SECOND, || async {
        redis
            .primary_of(&index)
            .await
            .ok()
            .filter(|p| *p != held_node)
    })
    .await;
    drop(held);
    let promoted = redis.primary_of(&index).await.expect("the index's primary");
    wait_for(
        "the mark made again on the promoted replica",
        30 * SECOND,
        || async { redis.zscore_on(promoted, &index, &mailbox).await.ok()? },
    )
    .await;
    assert!(!parked.is_finished(), "the Ping stayed parked meanwhile");
    parked.abort();
    env.cleanup().await;
}

/// A test environment whose services use `redis` (cluster mode) and the shared NATS.
async fn on_redis_cluster(redis: &LocalRedisCluster) -> Env {
    let mut env = Env::new().await;
    env.redis_url = redis.url();
    env.redis_mode = "cluster".into();
    env.account(MAILBOX, "pw").await;
    env
}

/// The devices, Pinging from now on: the first on frontend `a` (which the chaos test kills),
/// the others on `b`.
fn phones(a: &Frontend, b: &Frontend, heard: &Heard) -> Vec<tokio::task::JoinHandle<()>> {
    DEVICES
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let home = if i == 0 { a.addr } else { b.addr };
            tokio::spawn(keep_pinging(
                Device::new(home, MAILBOX, "pw", id),
                i,
                [home, b.addr],
                heard.clone(),
            ))
        })
        .collect()
}

/// A device as phones run: Ping, and Ping again whatever the answer; a connection that fails
/// sends it to the next address (its pod died, the balancer moves it).
async fn keep_pinging(
    mut device: Device,
    i: usize,
    addrs: [std::net::SocketAddr; 2],
    heard: Heard,
) {
    let mut at = 0;
    loop {
        match device.ping(Some(&ping_body(300, &["5"]))).await {
            Ok(response) if response.status == 200 => {
                let answer = response.ping();
                if answer.status == PingStatus::Changes {
                    if let Ok(mut h) = heard.lock() {
                        h.push((i, Instant::now()));
                    }
                    continue;
                }
                if answer.status == PingStatus::Expired {
                    continue;
                }
            }
            Ok(_) => {}
            Err(_) => {
                at = (at + 1) % addrs.len();
                device.move_to(addrs[at]);
            }
        }
        // A Status 8 or a 503 (a store restarting): the phone waits a little, as phones do.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every device is parked, makes one change (retried until the watcher accepts
/// it: while NATS restarts it answers 503), and waits until every device heard of it.
async fn round(env: &Env, w: &Watcher, heard: &Heard, when: &str, changes: &mut usize) {
    wait_for(
        &format!("every device parked {when}"),
        Duration::from_secs(30),
        || async move {
            for id in DEVICES {
                env.owner(MAILBOX, id).await?;
            }
            Some(())
        },
    )
    .await;
    let sent = Instant::now();
    wait_for(
        &format!("a change accepted {when}"),
        Duration::from_secs(30),
        || async move {
            let body = serde_json::json!({"mailbox": MAILBOX, "folders": ["5"]});
            (w.ingest(env, &body).await.status == 202).then_some(())
        },
    )
    .await;
    *changes += 1;
    let accepted = sent.elapsed();
    wait_for(
        &format!("every device to hear the change made {when}"),
        Duration::from_secs(30),
        || async move {
            let h = heard.lock().ok()?;
            DEVICES
                .iter()
                .enumerate()
                .all(|(i, _)| h.iter().any(|&(d, at)| d == i && at >= sent))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "{when}: accepted after {accepted:?}, heard by all after {:?}",
        sent.elapsed()
    );
}

/// A Redis unreachable for a few seconds is used again within seconds of its return, not after
/// the client's reconnect backoff has grown (redis 0.27's default waited 1 s, then 60 s).
#[tokio::test]
async fn redis_is_used_again_within_seconds_of_an_outage() {
    let env = Env::new().await;
    let redis = env.redis_addr();
    let proxy = dp_testkit::Proxy::start(redis).await;
    let url = format!("redis://{}", proxy.addr);
    let servers = dp_runtime::redis::RedisServers::parse("single", &url, None, 1000)
        .expect("a valid Redis URL");
    let conn = servers.connect(|| true).await.expect("connects");
    assert!(ping(conn.clone()).await);
    proxy.cut().await;
    // Commands during the outage fail, and each failure starts the client's reconnecting.
    let outage = Instant::now() + 3 * SECOND;
    while Instant::now() < outage {
        assert!(!ping(conn.clone()).await, "nothing passes a cut proxy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();
    wait_for("a command to pass again", 5 * SECOND, || {
        let conn = conn.clone();
        async move { ping(conn).await.then_some(()) }
    })
    .await;
    env.cleanup().await;
}

async fn ping(mut conn: dp_runtime::redis::Redis) -> bool {
    let cmd = redis::cmd("PING");
    let answer = cmd.query_async::<String>(&mut conn);
    matches!(tokio::time::timeout(SECOND, answer).await, Ok(Ok(_)))
}
