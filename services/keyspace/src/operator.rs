//! What operators and tools read: a device's whole state, and the namespace's epoch.

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::{Device, Owner, Store};

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

/// The incarnation of a namespace's Redis state (see [`crate::Keyspace::epoch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub id: String,
    /// When this state began (ms): devices first seen before it have state that was lost.
    pub created_ms: u64,
}

impl Store {
    /// The current epoch, made now if Redis has none (its state is new, or was lost).
    pub async fn epoch<C: ConnectionLike>(&self, conn: &mut C, now_ms: u64) -> RedisResult<Epoch> {
        let key = self.keys.epoch();
        let fresh = format!("{now_ms}:{:016x}", rand_id());
        let (_, value): (Option<String>, String) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(&fresh)
            .arg("NX")
            .cmd("GET")
            .arg(&key)
            .query_async(conn)
            .await?;
        let created_ms = value
            .split(':')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(now_ms);
        Ok(Epoch {
            id: value,
            created_ms,
        })
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
