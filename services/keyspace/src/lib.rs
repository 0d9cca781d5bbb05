//! The Redis key schema and the scripts that carry directpush's wake-up protocol
//! (ARCHITECTURE.md section 3). Only this crate names keys, so the watcher and the frontend cannot
//! drift apart.
//!
//! Every key of a mailbox carries the mailbox token as hash tag, `<ns>:{<token>}:...`, so the
//! scripts also run on Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<ns>:{M}:ver` | hash | folder id -> version, bumped on every change |
//! | `<ns>:{M}:own` | hash | device key -> owner of its parked Ping, `pod\trequest\texpiry_ms` |
//! | `<ns>:{M}:ntf:<device>` | hash | folder id -> version last reported to the device |
//! | `<ns>:{M}:prm:<device>` | string | the device's last heartbeat and folders, JSON |
//! | `<ns>:{M}:unc:<device>` | hash | the last Status 2 not yet known heard: `_until` (ms) and folder id -> the version it replaced |
//! | `<ns>:{M}:hier` | string | the mailbox's hierarchy version, raised by every change of kind `hierarchy` |
//! | `<ns>:{M}:fld:<device>` | hash | proxy mode: the device's folders from FolderSync, ServerId -> `type\tparent\tname`; the empty field holds the hierarchy version they reflect |
//! | `<ns>:{M}:syn:<device>` | hash | proxy mode: `r` Status 2 answers since the last Sync, `p:<id>` the version last reported, `l` the last full Sync request's collections (JSON), `k:<id>` each collection's last SyncKey |
#![forbid(unsafe_code)]

use dp_proto::events::FolderVersion;
use dp_proto::ids::{mailbox_token, token};
use dp_proto::ping::{FolderClass, PingFolder, PingRequest};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

mod owner;
pub use owner::Owner;

/// Key names of one namespace.
#[derive(Clone, Debug)]
pub struct Keyspace {
    ns: String,
}

impl Keyspace {
    pub fn new(namespace: &str) -> Self {
        Keyspace {
            ns: namespace.to_owned(),
        }
    }

    fn mailbox(&self, mailbox: &str, suffix: &str) -> String {
        format!("{}:{{{}}}:{}", self.ns, mailbox_token(mailbox), suffix)
    }

    pub fn versions(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "ver")
    }

    pub fn owners(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "own")
    }

    pub fn notified(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("ntf:{}", token(device_id)))
    }

    pub fn params(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("prm:{}", token(device_id)))
    }

    pub fn unconfirmed(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("unc:{}", token(device_id)))
    }

    pub fn hierarchy(&self, mailbox: &str) -> String {
        self.mailbox(mailbox, "hier")
    }

    pub fn folders(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("fld:{}", token(device_id)))
    }

    pub fn sync_state(&self, mailbox: &str, device_id: &str) -> String {
        self.mailbox(mailbox, &format!("syn:{}", token(device_id)))
    }

    /// A pattern matching every key of the namespace (for tests and tools that clean up).
    pub fn all_keys_pattern(&self) -> String {
        format!("{}:*", self.ns)
    }
}

/// One device of one mailbox, as the scripts need it.
#[derive(Clone, Copy, Debug)]
pub struct Device<'a> {
    pub mailbox: &'a str,
    pub device_id: &'a str,
    /// [`dp_proto::ids::device_key`] of the two.
    pub key: &'a str,
}

/// Who acknowledges a Status 2 (ARCHITECTURE.md, I2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No Sync is visible: the answer itself, once the device is known to have heard it.
    Standalone,
    /// In front of an ActiveSync server: the device's completed Sync of the folder.
    Proxy,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
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
    },
}

/// One folder change a FolderSync response carried.
pub enum HierarchyChange<'a> {
    Put {
        server_id: &'a str,
        parent_id: &'a str,
        display_name: &'a str,
        folder_type: u32,
    },
    Delete(&'a str),
}

/// A collection a Sync completed: the version read when the Sync started, and the new key.
pub struct Synced<'a> {
    pub collection: &'a str,
    pub version: u64,
    pub sync_key: Option<&'a str>,
}

/// What a Sync starts from: the mailbox's folder versions now, and the collections of the
/// device's last full Sync request (an empty request repeats them).
#[derive(Debug, Default)]
pub struct SyncStart {
    pub versions: std::collections::HashMap<String, u64>,
    pub last_request: Vec<String>,
}

/// What re-checking a parked Ping found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A newer Ping owns the device.
    Superseded,
    Changed(Vec<FolderVersion>),
}

/// The result of a bump: folder versions after it, and the live owners of the mailbox's Pings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bump {
    pub versions: Vec<FolderVersion>,
    pub owners: Vec<(String, Owner)>,
}

/// The scripts, loaded once; `invoke_async` sends EVALSHA and falls back to EVAL on NOSCRIPT.
pub struct Scripts {
    claim: Script,
    bump: Script,
    check: Script,
    ack: Script,
    hierarchy: Script,
    synced: Script,
    reported: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            claim: Script::new(concat!(
                include_str!("scripts/news.lua"),
                include_str!("scripts/claim.lua")
            )),
            bump: Script::new(include_str!("scripts/bump.lua")),
            ack: Script::new(include_str!("scripts/ack.lua")),
            check: Script::new(concat!(
                include_str!("scripts/news.lua"),
                include_str!("scripts/check.lua")
            )),
            hierarchy: Script::new(include_str!("scripts/hierarchy.lua")),
            synced: Script::new(include_str!("scripts/synced.lua")),
            reported: Script::new(include_str!("scripts/reported.lua")),
        }
    }
}

/// The store: key names, scripts and how long device state lives without a Ping.
pub struct Store {
    pub keys: Keyspace,
    scripts: Scripts,
    ttl_secs: u64,
}

impl Store {
    pub fn new(namespace: &str, ttl_secs: u64) -> Self {
        Store {
            keys: Keyspace::new(namespace),
            scripts: Scripts::default(),
            ttl_secs,
        }
    }

    /// Records `owner` as the device's parked Ping, merges the request with the cached
    /// parameters (and caches the result), settles the device's last Status 2 (see
    /// [`Store::ack`]) and finds the monitored folders with news. `now_ms` is the pod's clock.
    pub async fn claim<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        owner: &Owner,
        request: &PingRequest,
        now_ms: u64,
        mode: Mode,
    ) -> RedisResult<Claim> {
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.keys.versions(device.mailbox))
            .key(self.keys.owners(device.mailbox))
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(self.keys.params(device.mailbox, device.device_id))
            .key(self.keys.unconfirmed(device.mailbox, device.device_id))
            .key(self.keys.folders(device.mailbox, device.device_id))
            .key(self.keys.sync_state(device.mailbox, device.device_id))
            .key(self.keys.hierarchy(device.mailbox))
            .arg(device.key)
            .arg(owner.encode())
            .arg(self.ttl_secs)
            .arg(request.heartbeat.map_or(String::new(), |h| h.to_string()));
        match &request.folders {
            Some(folders) => {
                invocation.arg(folders.len()).arg(now_ms).arg(mode.as_str());
                for folder in folders {
                    invocation.arg(&folder.id).arg(folder.class.as_str());
                }
            }
            None => {
                invocation.arg(-1).arg(now_ms).arg(mode.as_str());
            }
        }
        let reply: Vec<String> = invocation.invoke_async(conn).await?;
        parse_claim(reply, request)
    }

    /// Increments the versions of `folders` (and the hierarchy version when `hierarchy`) and
    /// returns the owners of the mailbox's Pings.
    pub async fn bump<C: ConnectionLike>(
        &self,
        conn: &mut C,
        mailbox: &str,
        folders: &[String],
        hierarchy: bool,
        now_ms: u64,
    ) -> RedisResult<Bump> {
        let mut invocation = self.scripts.bump.prepare_invoke();
        invocation
            .key(self.keys.versions(mailbox))
            .key(self.keys.owners(mailbox))
            .key(self.keys.hierarchy(mailbox))
            .arg(now_ms)
            .arg(self.ttl_secs)
            .arg(if hierarchy { "1" } else { "0" });
        for folder in folders {
            invocation.arg(folder);
        }
        let reply: Vec<String> = invocation.invoke_async(conn).await?;
        let count: usize = reply.first().and_then(|c| c.parse().ok()).unwrap_or(0);
        let rest = reply.get(1..).unwrap_or_default();
        let (versions, owners) = rest.split_at((2 * count).min(rest.len()));
        Ok(Bump {
            versions: folder_versions(versions),
            owners: owners
                .chunks_exact(2)
                .filter_map(|pair| Some((pair[0].clone(), Owner::parse(&pair[1])?)))
                .collect(),
        })
    }

    /// Records that the device was told of these versions (after its Status 2 was written), by
    /// the answer to a Ping whose heartbeat would have run out at `until_ms`. The report stands
    /// once the device's next Ping comes before `until_ms`; a later one hears it again.
    pub async fn ack<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        versions: &[FolderVersion],
        until_ms: u64,
    ) -> RedisResult<()> {
        if versions.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.ack.prepare_invoke();
        invocation
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(self.keys.unconfirmed(device.mailbox, device.device_id))
            .arg(self.ttl_secs)
            .arg(until_ms);
        for v in versions {
            invocation.arg(&v.id).arg(v.version);
        }
        let _: i64 = invocation.invoke_async(conn).await?;
        Ok(())
    }

    /// Whether a parked Ping still owns its device and which monitored folders have news.
    pub async fn check<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        owner: &Owner,
        folder_ids: impl Iterator<Item = &str>,
    ) -> RedisResult<Check> {
        let mut invocation = self.scripts.check.prepare_invoke();
        invocation
            .key(self.keys.versions(device.mailbox))
            .key(self.keys.owners(device.mailbox))
            .key(self.keys.notified(device.mailbox, device.device_id))
            .arg(device.key)
            .arg(owner.encode());
        for id in folder_ids {
            invocation.arg(id);
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
        Some("hierarchy") => {
            return Ok(Claim::HierarchyChanged {
                previous: reply.get(1).and_then(|p| Owner::parse(p)),
            })
        }
        Some("ok") if reply.len() >= 6 => {}
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
        changed: folder_versions(&reply[6..]),
    })
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Proxy => "proxy",
        }
    }
}

/// Proxy mode: what the frontend learns from the commands it passes to the upstream.
impl Store {
    /// The mailbox's hierarchy version, read when a FolderSync starts.
    pub async fn hierarchy_version<C: ConnectionLike>(
        &self,
        conn: &mut C,
        mailbox: &str,
    ) -> RedisResult<u64> {
        let version: Option<u64> = redis::cmd("GET")
            .arg(self.keys.hierarchy(mailbox))
            .query_async(conn)
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// Applies a FolderSync response to the device's known hierarchy; `reset` when it is the
    /// whole hierarchy (SyncKey 0); `version` is the mailbox's hierarchy version read when the
    /// FolderSync started.
    pub async fn apply_hierarchy<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        reset: bool,
        version: u64,
        changes: &[HierarchyChange<'_>],
    ) -> RedisResult<()> {
        let mut invocation = self.scripts.hierarchy.prepare_invoke();
        invocation
            .key(self.keys.folders(device.mailbox, device.device_id))
            .arg(if reset { "1" } else { "0" })
            .arg(self.ttl_secs)
            .arg(version);
        for change in changes {
            match change {
                HierarchyChange::Put {
                    server_id,
                    parent_id,
                    display_name,
                    folder_type,
                } => invocation
                    .arg("P")
                    .arg(*server_id)
                    .arg(format!("{folder_type}\t{parent_id}\t{display_name}")),
                HierarchyChange::Delete(server_id) => invocation.arg("D").arg(*server_id),
            };
        }
        let _: i64 = invocation.invoke_async(conn).await?;
        Ok(())
    }

    /// Read when a Sync starts, before the upstream sees it: what it will have delivered.
    pub async fn sync_start<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
    ) -> RedisResult<SyncStart> {
        let (versions, last): (Vec<(String, u64)>, Option<String>) = redis::pipe()
            .hgetall(self.keys.versions(device.mailbox))
            .hget(self.keys.sync_state(device.mailbox, device.device_id), "l")
            .query_async(conn)
            .await?;
        Ok(SyncStart {
            versions: versions.into_iter().collect(),
            last_request: last
                .and_then(|l| serde_json::from_str(&l).ok())
                .unwrap_or_default(),
        })
    }

    /// Records a completed Sync: each collection's version at the Sync's start becomes the
    /// device's baseline, and `last_request` (when given) the collections an empty Sync repeats.
    pub async fn synced<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        collections: &[Synced<'_>],
        last_request: Option<&[String]>,
    ) -> RedisResult<()> {
        let mut invocation = self.scripts.synced.prepare_invoke();
        invocation
            .key(self.keys.notified(device.mailbox, device.device_id))
            .key(self.keys.sync_state(device.mailbox, device.device_id))
            .arg(self.ttl_secs)
            .arg(match last_request {
                Some(ids) => serde_json::to_string(ids).unwrap_or_default(),
                None => String::new(),
            });
        for c in collections {
            invocation
                .arg(c.collection)
                .arg(c.version)
                .arg(c.sync_key.unwrap_or(""));
        }
        let _: i64 = invocation.invoke_async(conn).await?;
        Ok(())
    }

    /// The last SyncKey the upstream gave the device for each collection, if any.
    pub async fn sync_keys<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        collections: &[&str],
    ) -> RedisResult<Vec<Option<String>>> {
        if collections.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = collections.iter().map(|c| format!("k:{c}")).collect();
        redis::cmd("HMGET")
            .arg(self.keys.sync_state(device.mailbox, device.device_id))
            .arg(fields)
            .query_async(conn)
            .await
    }

    /// Counts a Status 2 written in proxy mode and what it reported; returns the count since
    /// the last Sync.
    pub async fn reported<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        versions: &[FolderVersion],
    ) -> RedisResult<u32> {
        let mut invocation = self.scripts.reported.prepare_invoke();
        invocation
            .key(self.keys.sync_state(device.mailbox, device.device_id))
            .arg(self.ttl_secs);
        for v in versions {
            invocation.arg(&v.id).arg(v.version);
        }
        invocation.invoke_async(conn).await
    }
}

/// Connects to Redis, retrying every half second until it answers or `give_up` says stop: a
/// service waits for Redis rather than exiting, and reports not ready meanwhile.
pub async fn connect(
    url: &str,
    give_up: impl Fn() -> bool,
) -> RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let mut attempt = 0u32;
    loop {
        match redis::aio::ConnectionManager::new(client.clone()).await {
            Ok(manager) => return Ok(manager),
            Err(err) if give_up() => return Err(err),
            Err(err) => {
                if attempt.is_multiple_of(10) {
                    tracing::warn!(error = %err, "waiting for Redis");
                }
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// Everything Redis holds about one device, for operators (`dpctl device show`).
#[derive(Debug, Default)]
pub struct DeviceState {
    pub owner: Option<Owner>,
    /// The cached parameters as stored: `{"h": heartbeat, "f": [[id, class], ...]}`.
    pub params: Option<String>,
    /// Folder id -> version last reported to the device.
    pub notified: Vec<(String, String)>,
    /// Folder id -> current version, for the mailbox.
    pub versions: Vec<(String, String)>,
}

impl Store {
    pub async fn device_state<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
    ) -> RedisResult<DeviceState> {
        type Pairs = Vec<(String, String)>;
        let (owner, params, notified, versions): (Option<String>, Option<String>, Pairs, Pairs) =
            redis::pipe()
                .hget(self.keys.owners(device.mailbox), device.key)
                .get(self.keys.params(device.mailbox, device.device_id))
                .hgetall(self.keys.notified(device.mailbox, device.device_id))
                .hgetall(self.keys.versions(device.mailbox))
                .query_async(conn)
                .await?;
        Ok(DeviceState {
            owner: owner.as_deref().and_then(Owner::parse),
            params,
            notified,
            versions,
        })
    }
}
