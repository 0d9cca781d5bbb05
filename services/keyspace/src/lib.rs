//! The Redis key schema and the scripts that carry directpush's wake-up protocol
//! (ARCHITECTURE.md section 3). Only this crate names keys, so the watcher and the frontend cannot
//! drift apart.
//!
//! Every key of a mailbox carries the mailbox token as hash tag, `<ns>:{<token>}:...`, so the
//! scripts also run on Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<ns>:{M}:ver` | hash | folder id -> version, bumped on every change; `s:<path>` the same for a store folder (`s:*`: any), see `scripts/news.lua` |
//! | `<ns>:{M}:own` | hash | device key -> owner of its parked Ping, `pod\trequest\texpiry_ms` |
//! | `<ns>:{M}:ntf:<device>` | hash | folder id -> version last reported to the device |
//! | `<ns>:{M}:prm:<device>` | string | the device's last heartbeat and folders, JSON |
//! | `<ns>:{M}:unc:<device>` | hash | the last Status 2 not yet known heard: `_until` (ms) and folder id -> the version it replaced |
//! | `<ns>:{M}:hier` | string | the mailbox's hierarchy version, raised by every change of kind `hierarchy` |
//! | `<ns>:{M}:fld:<device>` | hash | proxy mode: the device's folders from FolderSync, ServerId -> `type\tparent\tname`; the empty field holds the hierarchy version they reflect |
//! | `<ns>:{M}:dev` | sorted set | device key -> its last Ping (ms): at most `MAX_DEVICES_PER_MAILBOX` |
//! | `<ns>:{M}:wat` | hash | `s:<path>` -> until when (ms) a parked Ping watches that store folder |
//! | `<ns>:{M}:syn:<device>` | hash | proxy mode: `r` Status 2 answers since the last Sync, `p:<id>` the version last reported, `l` the last full Sync request's collections (JSON), `k:<id>` each collection's last SyncKey |
#![forbid(unsafe_code)]

use dp_proto::events::FolderVersion;
use dp_proto::ping::{FolderClass, PingFolder, PingRequest};
use dp_runtime::redis::{invoke_durable, Durable};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

mod imap;
mod keys;
mod operator;
mod owner;
mod proxy;
mod wake_addr;
pub use keys::{Device, Keyspace, Mode};
pub use operator::{DeviceState, Epoch};
pub use owner::{Ended, Owner};
pub use proxy::{HierarchyChange, SyncStart, Synced};

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new device of a mailbox that has state for as many devices as allowed: refused.
    TooManyDevices,
    /// Neither the body nor the cache holds a heartbeat and folders: Status 3.
    MissingParameters,
    /// A pinged folder is not in the device's known hierarchy: Status 7.
    HierarchyChanged { previous: Option<Owner> },
    Claimed {
        /// Who owned the device's Ping before this one, if anyone.
        previous: Option<Owner>,
        heartbeat: u32,
        folders: Vec<PingFolder>,
        /// Monitored folders with news for this device: answer Status 2 at once.
        changed: Vec<FolderVersion>,
        /// Proxy mode: Status 2 answers since the device's last Sync.
        repeats: u32,
        /// Proxy mode: whether the device's folders were learned from a FolderSync.
        hierarchy_known: bool,
        /// Redis held nothing for this device: `changed` then lists every monitored folder
        /// at the version just taken as its baseline. A new device ignores them; one whose
        /// state predates a loss of Redis state reports them (I1).
        fresh: bool,
    },
}

/// What re-checking a parked Ping found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A newer Ping owns the device.
    Superseded,
    Changed(Vec<FolderVersion>),
}

/// One coalesced change of a mailbox, as the watcher bumps it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Change<'a> {
    /// Folders named by EAS ServerId.
    pub folders: &'a [String],
    /// Folders named by store path, as `news.lua` derives them (`#2` Inbox, `Archive/2024`).
    pub store_folders: &'a [String],
    /// A folder was created, deleted or renamed.
    pub hierarchy: bool,
}

/// The result of a bump: folder versions after it, and the live owners of the mailbox's Pings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bump {
    pub versions: Vec<FolderVersion>,
    /// Store folders of the change that a live Ping watches, and those none does.
    pub store_watched: usize,
    pub store_unwatched: usize,
    pub owners: Vec<(String, Owner)>,
}

/// The scripts, loaded once; `invoke_async` sends EVALSHA and falls back to EVAL on NOSCRIPT.
pub struct Scripts {
    claim: Script,
    bump: Script,
    check: Script,
    ack: Script,
    hierarchy: Script,
    sync_start: Script,
    synced: Script,
    reported: Script,
    release: Script,
    undelivered: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            claim: Script::new(concat!(
                include_str!("scripts/news.lua"),
                include_str!("scripts/claim.lua")
            )),
            bump: Script::new(include_str!("scripts/bump.lua")),
            ack: Script::new(concat!(
                include_str!("scripts/release_owner.lua"),
                include_str!("scripts/ack.lua")
            )),
            check: Script::new(concat!(
                include_str!("scripts/news.lua"),
                include_str!("scripts/check.lua")
            )),
            hierarchy: Script::new(include_str!("scripts/hierarchy.lua")),
            sync_start: Script::new(concat!(
                include_str!("scripts/news.lua"),
                include_str!("scripts/sync_start.lua")
            )),
            synced: Script::new(include_str!("scripts/synced.lua")),
            reported: Script::new(concat!(
                include_str!("scripts/release_owner.lua"),
                include_str!("scripts/reported.lua")
            )),
            release: Script::new(concat!(
                include_str!("scripts/release_owner.lua"),
                include_str!("scripts/release.lua")
            )),
            undelivered: Script::new(include_str!("scripts/undelivered.lua")),
        }
    }
}

/// The store: key names, scripts and how long device state lives without a Ping.
pub struct Store {
    pub keys: Keyspace,
    scripts: Scripts,
    ttl_secs: u64,
    /// Devices one mailbox may have state for (0: no limit).
    max_devices: u32,
}

impl Store {
    pub fn new(namespace: &str, ttl_secs: u64) -> Self {
        Store {
            keys: Keyspace::new(namespace),
            scripts: Scripts::default(),
            ttl_secs,
            max_devices: 0,
        }
    }

    /// Refuses a claim from a new device once a mailbox has state for `max` devices.
    pub fn with_max_devices(mut self, max: u32) -> Self {
        self.max_devices = max;
        self
    }

    /// Records `owner` as the device's parked Ping, merges the request with the cached
    /// parameters (and caches the result), settles the device's last Status 2 (see
    /// [`Store::ack`]) and finds the monitored folders with news. `now_ms` is the pod's clock.
    pub async fn claim<C: Durable>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        owner: &Owner,
        request: &PingRequest,
        now_ms: u64,
        mode: Mode,
    ) -> RedisResult<Claim> {
        // Named once: a key of the script, and where its replicas are waited for.
        let owners = self.keys.owners(device.mailbox);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.keys.versions(device.mailbox))
            .key(&owners)
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(self.keys.params(device.mailbox, device.device_id))
            .key(self.keys.unconfirmed(device.mailbox, device.device_id))
            .key(self.keys.folders(device.mailbox, device.device_id))
            .key(self.keys.sync_state(device.mailbox, device.device_id))
            .key(self.keys.hierarchy(device.mailbox))
            .key(self.keys.watched(device.mailbox))
            .key(self.keys.devices(device.mailbox))
            .arg(device.key)
            .arg(owner.encode())
            .arg(self.ttl_secs)
            .arg(request.heartbeat.map_or(String::new(), |h| h.to_string()));
        match &request.folders {
            Some(folders) => {
                invocation
                    .arg(folders.len())
                    .arg(now_ms)
                    .arg(mode.as_str())
                    .arg(self.max_devices);
                for folder in folders {
                    invocation.arg(&folder.id).arg(folder.class.as_str());
                }
            }
            None => {
                invocation
                    .arg(-1)
                    .arg(now_ms)
                    .arg(mode.as_str())
                    .arg(self.max_devices);
            }
        }
        // Durable: a failover must not forget whom to wake (I1).
        let reply: Vec<String> = invoke_durable(conn, &invocation, &owners).await?;
        parse_claim(reply, request)
    }

    /// Increments the versions of the change's folders (and the hierarchy version when it
    /// says so) and returns the owners of the mailbox's Pings.
    pub async fn bump<C: Durable>(
        &self,
        conn: &mut C,
        mailbox: &str,
        change: Change<'_>,
        now_ms: u64,
    ) -> RedisResult<Bump> {
        let versions = self.keys.versions(mailbox);
        let mut invocation = self.scripts.bump.prepare_invoke();
        invocation
            .key(&versions)
            .key(self.keys.owners(mailbox))
            .key(self.keys.hierarchy(mailbox))
            .key(self.keys.watched(mailbox))
            .arg(now_ms)
            .arg(self.ttl_secs)
            .arg(if change.hierarchy { "1" } else { "0" })
            .arg(change.folders.len());
        for folder in change.folders.iter().chain(change.store_folders) {
            invocation.arg(folder);
        }
        // Durable: its change is acknowledged to JetStream after this (I1).
        let reply: Vec<String> = invoke_durable(conn, &invocation, &versions).await?;
        let number = |i: usize| -> usize { reply.get(i).and_then(|c| c.parse().ok()).unwrap_or(0) };
        let (count, store_watched, store_unwatched) = (number(0), number(1), number(2));
        let rest = reply.get(3..).unwrap_or_default();
        let (versions, owners) = rest.split_at((2 * count).min(rest.len()));
        Ok(Bump {
            versions: folder_versions(versions),
            store_watched,
            store_unwatched,
            owners: owners
                .chunks_exact(2)
                .filter_map(|pair| Some((pair[0].clone(), Owner::parse(&pair[1])?)))
                .collect(),
        })
    }

    /// Records that the device was told of these versions (after its Status 2 was written), by
    /// the answer to a Ping whose heartbeat would have run out at `until_ms`. The report stands
    /// once the device's next Ping comes before `until_ms`; a later one hears it again.
    /// Returns false, recording nothing, when Redis no longer holds the device's state (lost
    /// since the claim): its next claim finds it new, and the frontend decides (I1).
    /// The answered Ping's owner entry goes in the same round trip (see [`Store::release`]).
    pub async fn ack<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        ended: Ended<'_>,
        versions: &[FolderVersion],
        until_ms: u64,
    ) -> RedisResult<bool> {
        if versions.is_empty() {
            return self.release(conn, device, ended).await.map(|_| true);
        }
        let mut invocation = self.scripts.ack.prepare_invoke();
        invocation
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(self.keys.unconfirmed(device.mailbox, device.device_id))
            .key(self.keys.owners(device.mailbox))
            .arg(self.ttl_secs)
            .arg(until_ms)
            .arg(device.key)
            .arg(ended.prefix());
        for v in versions {
            invocation.arg(&v.id).arg(v.version);
        }
        let recorded: i64 = invocation.invoke_async(conn).await?;
        Ok(recorded == 1)
    }

    /// The Status 2 that reported `versions` never reached the device (its connection failed
    /// after the write): those folders are news to it again, unless a later answer reported
    /// them. Returns the device's parked Ping, if any, when a folder was news again (else there
    /// is nothing for that Ping to hear).
    pub async fn undelivered<C: Durable>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        versions: &[FolderVersion],
    ) -> RedisResult<Option<Owner>> {
        let owners = self.keys.owners(device.mailbox);
        let mut invocation = self.scripts.undelivered.prepare_invoke();
        invocation
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(&owners)
            .arg(device.key);
        for v in versions {
            invocation.arg(&v.id).arg(v.version);
        }
        let owner: String = invoke_durable(conn, &invocation, &owners).await?;
        Ok(Owner::parse(&owner))
    }

    /// Forgets the owner entry of a Ping that has ended, unless a newer Ping owns the device by
    /// now. (A Ping whose Status 2 is acknowledged, [`Store::ack`], or counted,
    /// [`Store::reported`], needs no release: those do it.)
    pub async fn release<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        ended: Ended<'_>,
    ) -> RedisResult<bool> {
        let released: i64 = self
            .scripts
            .release
            .key(self.keys.owners(device.mailbox))
            .arg(device.key)
            .arg(ended.prefix())
            .invoke_async(conn)
            .await?;
        Ok(released == 1)
    }

    /// Whether a parked Ping still owns its device and which monitored folders have news.
    pub async fn check<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        owner: &Owner,
        folders: &[PingFolder],
    ) -> RedisResult<Check> {
        let mut invocation = self.scripts.check.prepare_invoke();
        invocation
            .key(self.keys.versions(device.mailbox))
            .key(self.keys.owners(device.mailbox))
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(self.keys.folders(device.mailbox, device.device_id))
            .arg(device.key)
            .arg(owner.encode());
        for folder in folders {
            invocation.arg(&folder.id).arg(folder.class.as_str());
        }
        let reply: Vec<String> = invocation.invoke_async(conn).await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(Check::Changed(folder_versions(&reply[1..]))),
            _ => Ok(Check::Superseded),
        }
    }
}

fn folder_versions(pairs: &[String]) -> Vec<FolderVersion> {
    pairs
        .chunks_exact(2)
        .map(|pair| FolderVersion {
            id: pair[0].clone(),
            version: pair[1].parse().unwrap_or(0),
        })
        .collect()
}

fn bad_reply(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::TypeError,
        "unexpected claim reply",
        what.to_owned(),
    ))
}

fn parse_claim(reply: Vec<String>, request: &PingRequest) -> RedisResult<Claim> {
    match reply.first().map(String::as_str) {
        Some("missing") => return Ok(Claim::MissingParameters),
        Some("full") => return Ok(Claim::TooManyDevices),
        Some("hierarchy") => {
            return Ok(Claim::HierarchyChanged {
                previous: reply.get(1).and_then(|p| Owner::parse(p)),
            })
        }
        Some("ok") if reply.len() >= 7 => {}
        _ => return Err(bad_reply("neither 'ok' nor 'missing'")),
    }
    let heartbeat = match request.heartbeat {
        Some(h) => h,
        None => reply[2]
            .parse()
            .map_err(|_| bad_reply("cached heartbeat"))?,
    };
    let folders = match &request.folders {
        Some(folders) => folders.clone(),
        None => {
            let pairs: Vec<(String, String)> =
                serde_json::from_str(&reply[3]).map_err(|_| bad_reply("cached folders"))?;
            pairs
                .into_iter()
                .map(|(id, class)| {
                    let class = FolderClass::parse(&class).unwrap_or(FolderClass::Email);
                    PingFolder { id, class }
                })
                .collect()
        }
    };
    Ok(Claim::Claimed {
        previous: Owner::parse(&reply[1]),
        heartbeat,
        folders,
        repeats: reply[4].parse().unwrap_or(0),
        hierarchy_known: reply[5] == "1",
        fresh: reply[6] == "1",
        changed: folder_versions(&reply[7..]),
    })
}
