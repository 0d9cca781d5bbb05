//! `dpctl device show MAILBOX DEVICE`: what Redis and the history know of one device.

use anyhow::{Context, Result};
use dp_keyspace::{Device, Store};
use dp_proto::ids::{canonical_mailbox, device_key};

pub async fn show(
    mailbox: &str,
    device_id: &str,
    namespace: &str,
    redis_mode: &str,
    redis_url: &str,
    database_url: &str,
) -> Result<()> {
    let mailbox = canonical_mailbox(mailbox);
    let key = device_key(&mailbox, device_id);
    let device = Device {
        mailbox: &mailbox,
        device_id,
        key: &key,
    };
    // A reading tool: no replica to wait for, and no waiting for Redis to come up.
    let servers = dp_runtime::redis::RedisServers::parse(redis_mode, redis_url, Some(0), 1000)?;
    let mut conn = servers
        .connect(|| true)
        .await
        .context("connecting to Redis")?;
    let state = Store::new(namespace, 0)
        .device_state(&mut conn, device)
        .await?;
    println!("device       {device_id} of {mailbox} (key {key})");
    match &state.owner {
        Some(owner) => println!(
            "owner        pod {} request {} (expires {} ms since epoch)",
            owner.pod, owner.request, owner.expiry_ms
        ),
        None => println!("owner        none (no Ping parked)"),
    }
    println!(
        "parameters   {}",
        state.params.as_deref().unwrap_or("none cached")
    );
    println!("folders      id: version now / last reported to the device");
    for (folder, reported) in &state.notified {
        let now = state
            .versions
            .iter()
            .find(|(id, _)| id == folder)
            .map_or("0", |(_, v)| v.as_str());
        let flag = if now != reported { "  <- news" } else { "" };
        println!("  {folder}: {now} / {reported}{flag}");
    }
    let pool = dp_db::lazy_pool(database_url, 1)?;
    match dp_db::history::recent(&pool, &mailbox, device_id, 10).await {
        Ok(rows) => {
            println!("history      newest first");
            for row in rows {
                println!(
                    "  {} {:>6.1}s {:<11} status {:<2} heartbeat {:>4} pod {} folders {}",
                    row.ended_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    (row.ended_at - row.started_at).num_milliseconds() as f64 / 1000.0,
                    row.outcome,
                    row.status.map_or("-".to_owned(), |s| s.to_string()),
                    row.effective_heartbeat
                        .map_or("-".to_owned(), |h| h.to_string()),
                    row.pod,
                    row.changed_folders.join(",")
                );
            }
        }
        Err(err) => println!("history      unavailable: {err}"),
    }
    Ok(())
}
