//! `store`: the store sources against the private Dovecot of `scripts/peers.sh start`, with a
//! frontend (proxy mode, stand-in upstream) and a watcher in this process:
//! 1. delivery over LMTP -> Status 2 through `contrib/dovecot/directpush.lua`, p50/p99;
//! 2. what the script adds to one `dovecot-lda` delivery (a user with and one without it);
//! 3. the `imap` role (release `mailbox-watcher` processes): RSS per watched mailbox, and the
//!    time until another replica watches every mailbox of one that was killed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dp_proto::ping::PingStatus;
use dp_proto::query::Command;
use dp_proto::wbxml::{encode, Element};
use dp_testkit::client::ping_body;
use dp_testkit::dovecot::{self, MailUser, MASTER};
use dp_testkit::upstream::{
    folder_sync_tree, sync_answer, sync_request, Answer, Received, Upstream,
};
use dp_testkit::{Device, Env, Frontend, Watcher};

#[derive(clap::Args)]
pub struct StoreArgs {
    /// LMTP deliveries, each waking a parked Ping through the Lua script.
    #[arg(long, default_value_t = 200)]
    deliveries: usize,
    /// `dovecot-lda` deliveries with the script, and as many without.
    #[arg(long, default_value_t = 50)]
    lda: usize,
    /// Mailboxes the IMAP role watches (0: skip that part).
    #[arg(long, default_value_t = 500)]
    imap_mailboxes: usize,
    /// The release watcher binary the IMAP part runs.
    #[arg(long, default_value = "target/release/mailbox-watcher")]
    watcher_bin: PathBuf,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn summary(mut took: Vec<Duration>) -> (f64, f64) {
    took.sort();
    (percentile(&took, 0.5), percentile(&took, 0.99))
}

async fn standin() -> Upstream {
    Upstream::start(|request: &Received| match request.command() {
        Some("FolderSync") => {
            Answer::wbxml(folder_sync_tree("1", &[("mail/INBOX", "0", "Inbox", "2")]))
        }
        Some("Sync") => Answer::wbxml(sync_answer(&[("mail/INBOX", "k2")])),
        _ => Answer::new(200, Vec::new()),
    })
    .await
}

pub async fn run(args: StoreArgs) -> Result<serde_json::Value> {
    let env = Env::new().await;
    let upstream = standin().await;
    // One device Pings once per delivery, faster than a phone would.
    let frontend = Frontend::start(
        &env,
        "a",
        &[
            ("--upstream-url", &upstream.url()),
            ("--pings-per-device-per-minute", "0"),
        ],
    )
    .await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let user = MailUser::create(
        "bench",
        &MailUser::directpush_fields(watcher.addr, &env.ingest_token),
    )
    .await;
    env.account(&user.name, "pw").await;
    let device = Device::new(frontend.addr, &user.name, "pw", "bench1");
    let (p50, p99) = summary(lmtp(&env, device, &user, args.deliveries).await?);
    if args.deliveries > 0 {
        println!(
            "LMTP delivery -> Status 2 ({} deliveries): p50 {p50:.2} ms, p99 {p99:.2} ms",
            args.deliveries
        );
    }
    let mut out = serde_json::json!({
        "lmtp_to_status2_ms": {"p50": p50, "p99": p99, "n": args.deliveries},
        "lda_ms": lda(&user, args.lda).await?,
    });
    if args.imap_mailboxes > 0 {
        out["imap"] = imap(&env, &args).await?;
    }
    env.cleanup().await;
    Ok(out)
}

/// Delivers `deliveries` messages over LMTP, each while the device's Ping is parked: how long
/// from each delivery to the Status 2 it brought.
async fn lmtp(
    env: &Env,
    mut device: Device,
    user: &MailUser,
    deliveries: usize,
) -> Result<Vec<Duration>> {
    let folders = encode(&Element::new(7, 0x16).child(Element::with_text(7, 0x12, "0")))?;
    device.command(Command::FolderSync, &folders, "").await?;
    let mut woken = Vec::new();
    let mut owner = None;
    for _ in 0..deliveries {
        let mut parked = device;
        let task = tokio::spawn(async move {
            let answer = parked
                .ping_within(
                    Some(&ping_body(300, &["mail/INBOX"])),
                    Duration::from_secs(30),
                )
                .await;
            (parked, answer, Instant::now())
        });
        owner = Some(
            env.wait_parked(&user.name, "bench1", "a", owner.as_ref())
                .await,
        );
        let (_, message) = dovecot::message(&user.name);
        let started = Instant::now();
        user.deliver_lmtp(&message).await?;
        let (back, answer, at) = task.await?;
        if answer.ping().status != PingStatus::Changes {
            bail!("a delivery did not wake the Ping: {:?}", answer.ping());
        }
        woken.push(at - started);
        device = back;
        device
            .command(Command::Sync, &sync_request("mail/INBOX", "k1"), "")
            .await?;
    }
    Ok(woken)
}

/// What the script adds to a `dovecot-lda` delivery: `n` deliveries to a user with it, and as
/// many to one without.
async fn lda(user: &MailUser, n: usize) -> Result<serde_json::Value> {
    let plain = MailUser::create("plain", &[]).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (_, message) = dovecot::message(&user.name);
        with.push(user.deliver_lda(&message).await?);
        without.push(plain.deliver_lda(&message).await?);
    }
    let (with50, with99) = summary(with);
    let (without50, without99) = summary(without);
    println!(
        "dovecot-lda ({n} each): with the script p50 {with50:.1} ms p99 {with99:.1} ms; without p50 {without50:.1} ms p99 {without99:.1} ms"
    );
    Ok(serde_json::json!({
        "with_script_p50": with50, "with_script_p99": with99,
        "without_p50": without50, "without_p99": without99, "n": n,
    }))
}

/// A release watcher with only the imap role, as its own process.
struct Replica {
    child: tokio::process::Child,
    admin: std::net::SocketAddr,
}

impl Replica {
    fn start(env: &Env, bin: &PathBuf, pod: &str) -> Result<Replica> {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = tokio::process::Command::new(bin)
            .env("DP_NAMESPACE", &env.namespace)
            .env("POD_NAME", pod)
            .env("NATS_URL", &env.nats_url)
            .env("REDIS_URL", &env.redis_url)
            .env("ADMIN_ADDR", admin.to_string())
            .env("WATCHER_ROLES", "imap")
            .env("IMAP_URL", format!("imap://{}", dovecot::IMAP))
            .env("IMAP_MASTER_USER", MASTER.0)
            .env("IMAP_MASTER_PASSWORD", MASTER.1)
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --release -p mailbox-watcher)",
                    bin.display()
                )
            })?;
        Ok(Replica { child, admin })
    }

    /// Started, serving its metrics and ready: its runtime settled before a baseline is read.
    async fn ready(env: &Env, bin: &PathBuf, pod: &str) -> Result<Replica> {
        let replica = Replica::start(env, bin, pod)?;
        until(pod, Duration::from_secs(20), async || {
            replica.metric("dp_watcher_imap_watched").await == 0.0 && replica.rss() > 0
        })
        .await?;
        until("a replica ready", Duration::from_secs(20), async || {
            dp_testkit::client::http_get(replica.admin, "/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await?;
        Ok(replica)
    }

    fn rss(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    async fn metric(&self, series: &str) -> f64 {
        match dp_testkit::client::http_get(self.admin, "/metrics").await {
            Ok(page) => dp_testkit::services::sample(&page.text(), series),
            Err(_) => 0.0,
        }
    }
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn imap(env: &Env, args: &StoreArgs) -> Result<serde_json::Value> {
    let n = args.imap_mailboxes;
    let store = dp_keyspace::Store::new(&env.namespace, 86_400);
    let mut redis = env.redis().await;
    let a = Replica::ready(env, &args.watcher_bin, "imap-a").await?;
    let before = a.rss();
    let until_ms = dp_runtime_now_ms() + 3_600_000;
    let users = MailUser::create_many("watched", n, &[]).await;
    let started = Instant::now();
    for user in &users {
        store.mark_pinged(&mut redis, &user.name, until_ms).await?;
    }
    until(
        "every mailbox watched",
        Duration::from_secs(600),
        async || a.metric("dp_watcher_imap_sessions_total").await >= n as f64,
    )
    .await?;
    let first = started.elapsed();
    let after = a.rss();
    let per = after.saturating_sub(before) / n as u64;
    println!(
        "IMAP role: {n} mailboxes watched by one replica in {:.1} s; RSS {:.1} MiB -> {:.1} MiB, {per} B per watched mailbox",
        first.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    let b = Replica::start(env, &args.watcher_bin, "imap-b")?;
    until(
        "both replicas sharing",
        Duration::from_secs(120),
        async || {
            let x = a.metric("dp_watcher_imap_watched").await;
            let y = b.metric("dp_watcher_imap_watched").await;
            x > 0.0 && y > 0.0 && x + y == n as f64
        },
    )
    .await?;
    let moved = a.metric("dp_watcher_imap_watched").await;
    let b_sessions = b.metric("dp_watcher_imap_sessions_total").await;
    let mut a = a;
    a.child.kill().await?;
    let died = Instant::now();
    until(
        "b to watch everything",
        Duration::from_secs(600),
        async || b.metric("dp_watcher_imap_sessions_total").await >= b_sessions + moved,
    )
    .await?;
    let takeover = died.elapsed();
    println!(
        "IMAP role: replica killed with {moved} mailboxes; the other watched them all {:.1} s later",
        takeover.as_secs_f64()
    );
    Ok(serde_json::json!({
        "mailboxes": n,
        "first_watch_s": first.as_secs_f64(),
        "rss_before": before,
        "rss_after": after,
        "bytes_per_mailbox": per,
        "moved": moved,
        "takeover_s": takeover.as_secs_f64(),
    }))
}

fn dp_runtime_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
