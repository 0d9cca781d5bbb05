//! Where each frontend takes direct wakes (`WAKE_LISTEN_ADDR`): it announces its address with
//! an expiry and refreshes it while it runs; watchers look it up before they open a link.

use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::Store;

impl Store {
    /// Announces that `pod` takes direct wakes at `addr` for the next `ttl_secs`.
    pub async fn announce_wake_addr<C: ConnectionLike>(
        &self,
        conn: &mut C,
        pod: &str,
        addr: &str,
        ttl_secs: u64,
    ) -> RedisResult<()> {
        redis::cmd("SET")
            .arg(self.keys.wake_addr(pod))
            .arg(addr)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async(conn)
            .await
    }

    /// Where `pod` takes direct wakes, if it announced an address that has not expired.
    pub async fn wake_addr<C: ConnectionLike>(
        &self,
        conn: &mut C,
        pod: &str,
    ) -> RedisResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.keys.wake_addr(pod))
            .query_async(conn)
            .await
    }

    /// Withdraws `pod`'s address if it is still `addr` (a new incarnation of the pod may have
    /// announced its own since).
    pub async fn withdraw_wake_addr<C: ConnectionLike>(
        &self,
        conn: &mut C,
        pod: &str,
        addr: &str,
    ) -> RedisResult<()> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
        );
        let _: i64 = script
            .key(self.keys.wake_addr(pod))
            .arg(addr)
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}
