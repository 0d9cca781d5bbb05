//! Proxy mode: what the frontend learns from the commands it passes to the upstream.

use redis::aio::ConnectionLike;
use redis::RedisResult;

use dp_proto::events::FolderVersion;

use crate::{Device, Ended, Store};

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
        let reply: Vec<String> = self
            .scripts
            .sync_start
            .key(self.keys.versions(device.mailbox))
            .key(self.keys.sync_state(device.mailbox, device.device_id))
            .key(self.keys.folders(device.mailbox, device.device_id))
            .key(self.keys.params(device.mailbox, device.device_id))
            .arg(self.ttl_secs)
            .invoke_async(conn)
            .await?;
        let last = reply.first().map(String::as_str).unwrap_or_default();
        Ok(SyncStart {
            versions: reply
                .get(1..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect(),
            last_request: serde_json::from_str(last).unwrap_or_default(),
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
    /// the last Sync. The answered Ping's owner entry goes in the same round trip.
    pub async fn reported<C: ConnectionLike>(
        &self,
        conn: &mut C,
        device: Device<'_>,
        ended: Ended<'_>,
        versions: &[FolderVersion],
    ) -> RedisResult<u32> {
        let mut invocation = self.scripts.reported.prepare_invoke();
        invocation
            .key(self.keys.sync_state(device.mailbox, device.device_id))
            .key(self.keys.owners(device.mailbox))
            .arg(self.ttl_secs)
            .arg(device.key)
            .arg(ended.prefix());
        for v in versions {
            invocation.arg(&v.id).arg(v.version);
        }
        invocation.invoke_async(conn).await
    }
}
