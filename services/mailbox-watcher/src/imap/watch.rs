//! Watching one mailbox: a session logs in through the master user, catches up by comparing
//! every folder's counters with what was last seen (saved in Redis, so a reconnect or another
//! replica taking over misses nothing), then listens: NOTIFY (RFC 5465) where the server has
//! it, else IDLE on INBOX and a STATUS of the other pinged folders every poll interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dp_proto::events::{ChangeEvent, ChangeKind};
use tokio::sync::watch;

use super::client::Client;
use super::parse::{self, Counters, Token, Untagged};
use super::Context;

/// A mailbox's folders: raw (modified UTF-7) name -> counters.
type Folders = BTreeMap<String, Counters>;

/// Watches `mailbox` until `stop` turns true, reconnecting after any failure.
pub async fn run(ctx: Arc<Context>, mailbox: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = tokio::select! {
            outcome = session(&ctx, &mailbox) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(err) = outcome {
            ctx.shared.metrics.imap.reconnects.inc();
            tracing::warn!(%mailbox, error = %format!("{err:#}"), retry_in = ?backoff, "IMAP watch interrupted");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn session(ctx: &Context, mailbox: &str) -> anyhow::Result<()> {
    let timeout = ctx.settings.timeout;
    let mut client = Client::login(&ctx.server, mailbox, timeout).await?;
    if client.has("CONDSTORE") {
        client.command("ENABLE CONDSTORE").await?;
    }
    let mut seen = load(ctx, mailbox).await?;
    let now = list(&mut client).await?;
    let changes = if seen.is_empty() {
        // Never seen before: mail that came between the Ping that made the mailbox watched
        // and this listing is in the baseline. Raising INBOX's version without a wake has the
        // device's next Ping look at it: late by at most one heartbeat, never lost.
        let inbox = now.keys().find(|n| n.eq_ignore_ascii_case("INBOX"));
        inbox
            .map(|n| (n.clone(), ChangeKind::Modified))
            .into_iter()
            .collect()
    } else {
        compare(&seen, &now)
    };
    publish(ctx, mailbox, &changes).await?;
    save(ctx, mailbox, true, &now, &[]).await?;
    seen = now;
    ctx.shared.metrics.imap.sessions.inc();
    tracing::debug!(%mailbox, folders = seen.len(), caught_up = changes.len(), "watching");
    if ctx.settings.notify && client.has("NOTIFY") {
        let set = "NOTIFY SET (personal (MessageNew MessageExpunge FlagChange MailboxName))";
        if client.command(set).await.is_ok() {
            return notified(ctx, mailbox, client, seen).await;
        }
    }
    idle(ctx, mailbox, client, seen).await
}

/// Every selectable folder with its counters: one LIST-STATUS where the server has it.
async fn list(client: &mut Client) -> anyhow::Result<Folders> {
    let items = if client.has("CONDSTORE") {
        "UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ"
    } else {
        "UIDVALIDITY UIDNEXT MESSAGES"
    };
    let listing = if client.has("LIST-STATUS") {
        client
            .command(&format!("LIST \"\" \"*\" RETURN (STATUS ({items}))"))
            .await?
    } else {
        client.command("LIST \"\" \"*\"").await?
    };
    let mut folders = Folders::new();
    let mut unstatused = Vec::new();
    for response in &listing {
        match parse::untagged(response) {
            Untagged::List {
                name,
                noselect: false,
                ..
            } => {
                folders.entry(name.clone()).or_default();
                unstatused.push(name);
            }
            Untagged::Status { name, items } => {
                let entry = folders.entry(name).or_default();
                *entry = Untagged::counters(&items, *entry);
            }
            _ => {}
        }
    }
    if !client.has("LIST-STATUS") {
        for name in unstatused {
            let counters = status(client, &name, items).await?;
            folders.insert(name, counters);
        }
    }
    Ok(folders)
}

async fn status(client: &mut Client, name: &str, items: &str) -> anyhow::Result<Counters> {
    let mut counters = Counters::default();
    for response in client
        .command(&format!("STATUS {} ({items})", parse::quote(name)))
        .await?
    {
        if let Untagged::Status { items, .. } = parse::untagged(&response) {
            counters = Untagged::counters(&items, counters);
        }
    }
    Ok(counters)
}

/// What changed between two views of a mailbox, in the store's words.
fn compare(before: &Folders, after: &Folders) -> Vec<(String, ChangeKind)> {
    let mut changes = Vec::new();
    for (name, now) in after {
        let kind = match before.get(name) {
            None => Some(ChangeKind::Hierarchy),
            Some(then) => change_of(then, now),
        };
        changes.extend(kind.map(|k| (name.clone(), k)));
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        changes.push((name.clone(), ChangeKind::Hierarchy));
    }
    changes
}

fn change_of(then: &Counters, now: &Counters) -> Option<ChangeKind> {
    if now.uidvalidity != then.uidvalidity || now.uidnext > then.uidnext {
        Some(ChangeKind::Added)
    } else if now.messages < then.messages {
        Some(ChangeKind::Removed)
    } else if now.messages != then.messages || now.highestmodseq != then.highestmodseq {
        Some(ChangeKind::Modified)
    } else {
        None
    }
}

/// NOTIFY: the server tells of every folder's changes; a NOOP now and then keeps the
/// connection known alive (and finds it dead).
async fn notified(
    ctx: &Context,
    mailbox: &str,
    mut client: Client,
    mut seen: Folders,
) -> anyhow::Result<()> {
    loop {
        let response = match tokio::time::timeout(ctx.settings.keepalive, client.read()).await {
            Ok(response) => response?,
            Err(_) => {
                let answers = tokio::time::timeout(ctx.settings.timeout, client.command("NOOP"))
                    .await
                    .context("NOOP timed out")??;
                for response in answers {
                    apply(ctx, mailbox, &mut seen, &response).await?;
                }
                continue;
            }
        };
        apply(ctx, mailbox, &mut seen, &response).await?;
    }
}

/// Applies one untagged response to `seen`, publishing and saving what changed.
async fn apply(
    ctx: &Context,
    mailbox: &str,
    seen: &mut Folders,
    response: &[Token],
) -> anyhow::Result<()> {
    match parse::untagged(response) {
        Untagged::Status { name, items } => {
            let then = seen.get(&name).copied().unwrap_or_default();
            let now = Untagged::counters(&items, then);
            record(ctx, mailbox, seen, name, now).await?;
        }
        Untagged::List { name, gone, .. } => {
            publish(ctx, mailbox, &[(name.clone(), ChangeKind::Hierarchy)]).await?;
            if gone {
                save(
                    ctx,
                    mailbox,
                    false,
                    &Folders::new(),
                    std::slice::from_ref(&name),
                )
                .await?;
                seen.remove(&name);
            } else {
                let fresh = Counters::default();
                save(
                    ctx,
                    mailbox,
                    false,
                    &Folders::from([(name.clone(), fresh)]),
                    &[],
                )
                .await?;
                seen.entry(name).or_insert(fresh);
            }
        }
        Untagged::Bye => anyhow::bail!("the server ended the session"),
        _ => {}
    }
    Ok(())
}

/// IDLE on INBOX; every poll interval, and whenever INBOX stirs, a STATUS of the folders the
/// mailbox's parked Pings watch.
async fn idle(
    ctx: &Context,
    mailbox: &str,
    mut client: Client,
    mut seen: Folders,
) -> anyhow::Result<()> {
    client.command("EXAMINE INBOX").await?;
    loop {
        let tag = client.send("IDLE").await?;
        let deadline = tokio::time::Instant::now() + ctx.settings.poll;
        while let Ok(response) = tokio::time::timeout_at(deadline, client.read()).await {
            let response = response?;
            if response.get(2).is_some_and(stirs) {
                break;
            }
            if parse::untagged(&response) == Untagged::Bye {
                anyhow::bail!("the server ended the session");
            }
        }
        client.send_raw("DONE").await?;
        client.finish(&tag, "IDLE").await?;
        poll(ctx, mailbox, &mut client, &mut seen).await?;
    }
}

/// `* n EXISTS`, `* n EXPUNGE`, `* n FETCH`: INBOX changed.
fn stirs(token: &Token) -> bool {
    token.text().is_some_and(|t| {
        ["EXISTS", "EXPUNGE", "FETCH"]
            .iter()
            .any(|w| t.eq_ignore_ascii_case(w))
    })
}

/// STATUS of INBOX and of the folders a live Ping watches; publishes what changed.
async fn poll(
    ctx: &Context,
    mailbox: &str,
    client: &mut Client,
    seen: &mut Folders,
) -> anyhow::Result<()> {
    let mut redis = ctx.redis.clone();
    let watched: BTreeSet<String> = ctx
        .shared
        .store
        .watched_store_folders(&mut redis, mailbox, dp_runtime::now_ms())
        .await?
        .into_iter()
        .collect();
    let names = &ctx.shared.config.store_names;
    let every = watched.contains("*");
    let wanted: Vec<String> = seen
        .keys()
        .filter(|raw| {
            raw.eq_ignore_ascii_case("INBOX")
                || every
                || watched.contains(&names.path(&parse::decode_mailbox(raw)))
        })
        .cloned()
        .collect();
    let items = if client.has("CONDSTORE") {
        "UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ"
    } else {
        "UIDVALIDITY UIDNEXT MESSAGES"
    };
    for name in wanted {
        let now = status(client, &name, items).await?;
        record(ctx, mailbox, seen, name, now).await?;
    }
    Ok(())
}

/// A folder's counters now: what changed is made durable first, then remembered.
async fn record(
    ctx: &Context,
    mailbox: &str,
    seen: &mut Folders,
    name: String,
    now: Counters,
) -> anyhow::Result<()> {
    let then = seen.get(&name).copied().unwrap_or_default();
    if let Some(kind) = change_of(&then, &now) {
        publish(ctx, mailbox, &[(name.clone(), kind)]).await?;
        save(
            ctx,
            mailbox,
            false,
            &Folders::from([(name.clone(), now)]),
            &[],
        )
        .await?;
    }
    seen.insert(name, now);
    Ok(())
}

async fn load(ctx: &Context, mailbox: &str) -> anyhow::Result<Folders> {
    let mut redis = ctx.redis.clone();
    let raw = ctx.shared.store.imap_seen(&mut redis, mailbox).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(name, value)| Some((name, Counters::decode(&value)?)))
        .collect())
}

async fn save(
    ctx: &Context,
    mailbox: &str,
    replace: bool,
    folders: &Folders,
    gone: &[String],
) -> anyhow::Result<()> {
    let encoded: Vec<(String, String)> = folders
        .iter()
        .map(|(name, c)| (name.clone(), c.encode()))
        .collect();
    let mut redis = ctx.redis.clone();
    ctx.shared
        .store
        .imap_save(&mut redis, mailbox, replace, &encoded, gone)
        .await?;
    Ok(())
}

/// Makes the changes durable in the change stream, as the ingest API does.
async fn publish(
    ctx: &Context,
    mailbox: &str,
    changes: &[(String, ChangeKind)],
) -> anyhow::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let events = changes
        .iter()
        .map(|(raw, kind)| ChangeEvent {
            mailbox: mailbox.to_owned(),
            folders: Vec::new(),
            store_folder: Some(parse::decode_mailbox(raw)),
            kind: *kind,
            accepted_at_us: None,
        })
        .collect();
    let count = crate::ingest::publish(&ctx.shared, events)
        .await
        .map_err(anyhow::Error::msg)?;
    ctx.shared.metrics.imap.changes.inc_by(count as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(uidvalidity: u64, uidnext: u64, messages: u64, modseq: u64) -> Counters {
        Counters {
            uidvalidity,
            uidnext,
            messages,
            highestmodseq: modseq,
        }
    }

    #[test]
    fn catching_up_names_each_kind_of_change() {
        let before = Folders::from([
            ("INBOX".into(), c(1, 10, 5, 100)),
            ("Sent".into(), c(1, 3, 2, 7)),
            ("Old".into(), c(1, 1, 0, 1)),
            ("Flags".into(), c(1, 4, 3, 9)),
            ("Trash".into(), c(1, 8, 4, 20)),
        ]);
        let after = Folders::from([
            ("INBOX".into(), c(1, 11, 6, 101)),
            ("Sent".into(), c(1, 3, 2, 7)),
            ("Flags".into(), c(1, 4, 3, 10)),
            ("Trash".into(), c(1, 8, 2, 22)),
            ("New".into(), c(1, 1, 0, 1)),
        ]);
        let changes: BTreeMap<String, ChangeKind> = compare(&before, &after).into_iter().collect();
        assert_eq!(changes["INBOX"], ChangeKind::Added);
        assert_eq!(changes["Flags"], ChangeKind::Modified);
        assert_eq!(changes["Trash"], ChangeKind::Removed);
        assert_eq!(changes["New"], ChangeKind::Hierarchy);
        assert_eq!(changes["Old"], ChangeKind::Hierarchy);
        assert!(!changes.contains_key("Sent"));
        assert_eq!(
            change_of(&c(1, 10, 5, 100), &c(2, 1, 0, 1)),
            Some(ChangeKind::Added),
            "a folder recreated under a new UIDVALIDITY"
        );
    }
}
