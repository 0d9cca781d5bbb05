//! What operators and tools read: connecting, and a device's whole state.

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::{Device, Owner, Store};

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
