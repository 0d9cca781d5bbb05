//! What the IMAP watcher role keeps in Redis: which mailboxes have parked Pings, which replicas
//! are alive, and what each watched mailbox's folders looked like when last seen.

use dp_runtime::redis::{write_durable, Durable};
use redis::aio::ConnectionLike;
use redis::RedisResult;

use crate::Store;

impl Store {
    /// Whether an IMAP watcher is running (frontends then record the mailboxes they park).
    pub async fn imap_in_use<C: ConnectionLike>(&self, conn: &mut C) -> RedisResult<bool> {
        redis::cmd("EXISTS")
            .arg(self.keys.imap_replicas())
            .query_async(conn)
            .await
    }

    /// Records that `mailbox` has a parked Ping until `until_ms`. On the replicas too (see
    /// [`write_durable`]): a mark lost with its primary would leave the mailbox unwatched, and
    /// its mail would wake nobody.
    pub async fn mark_pinged<C: Durable>(
        &self,
        conn: &mut C,
        mailbox: &str,
        until_ms: u64,
    ) -> RedisResult<()> {
        let key = self.keys.pinged();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&key).arg("GT").arg(until_ms).arg(mailbox);
        let _: i64 = write_durable(conn, &zadd, &key).await?;
        Ok(())
    }

    /// The mailboxes with a Ping parked until `since_ms` or later; forgets those whose last
    /// Ping ended before `forget_before_ms`.
    pub async fn pinged_since<C: ConnectionLike>(
        &self,
        conn: &mut C,
        since_ms: u64,
        forget_before_ms: u64,
    ) -> RedisResult<Vec<String>> {
        let (mailboxes, _): (Vec<String>, i64) = redis::pipe()
            .cmd("ZRANGEBYSCORE")
            .arg(self.keys.pinged())
            .arg(since_ms)
            .arg("+inf")
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.pinged())
            .arg("-inf")
            .arg(format!("({forget_before_ms}"))
            .query_async(conn)
            .await?;
        Ok(mailboxes)
    }

    /// Announces `replica` alive until `until_ms` and returns the replicas alive at `now_ms`
    /// (forgetting the others).
    pub async fn imap_heartbeat<C: ConnectionLike>(
        &self,
        conn: &mut C,
        replica: &str,
        until_ms: u64,
        now_ms: u64,
    ) -> RedisResult<Vec<String>> {
        let key = self.keys.imap_replicas();
        let (_, all): ((), Vec<(String, u64)>) = redis::pipe()
            .hset(&key, replica, until_ms)
            .hgetall(&key)
            .query_async(conn)
            .await?;
        let (alive, dead): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, t)| *t >= now_ms);
        if !dead.is_empty() {
            let names: Vec<&str> = dead.iter().map(|(n, _)| n.as_str()).collect();
            let _: i64 = redis::cmd("HDEL")
                .arg(&key)
                .arg(names)
                .query_async(conn)
                .await?;
        }
        Ok(alive.into_iter().map(|(n, _)| n).collect())
    }

    /// Removes `replica` at once (a clean shutdown hands its mailboxes over without waiting).
    pub async fn imap_leave<C: ConnectionLike>(
        &self,
        conn: &mut C,
        replica: &str,
    ) -> RedisResult<()> {
        redis::cmd("HDEL")
            .arg(self.keys.imap_replicas())
            .arg(replica)
            .query_async(conn)
            .await
    }

    /// The mailbox's folders as last seen: raw name -> state.
    pub async fn imap_seen<C: ConnectionLike>(
        &self,
        conn: &mut C,
        mailbox: &str,
    ) -> RedisResult<Vec<(String, String)>> {
        redis::cmd("HGETALL")
            .arg(self.keys.imap_seen(mailbox))
            .query_async(conn)
            .await
    }

    /// Replaces or updates what was seen; `replace` drops folders not listed.
    pub async fn imap_save<C: ConnectionLike>(
        &self,
        conn: &mut C,
        mailbox: &str,
        replace: bool,
        folders: &[(String, String)],
        gone: &[String],
    ) -> RedisResult<()> {
        let key = self.keys.imap_seen(mailbox);
        let mut pipe = redis::pipe();
        if replace {
            pipe.del(&key).ignore();
        }
        if !gone.is_empty() {
            pipe.hdel(&key, gone).ignore();
        }
        if !folders.is_empty() {
            pipe.hset_multiple(&key, folders).ignore();
        }
        pipe.expire(&key, self.ttl_secs as i64).ignore();
        pipe.query_async(conn).await
    }

    /// The store folders a live Ping of the mailbox watches (`s:*`: any), as of `now_ms`.
    pub async fn watched_store_folders<C: ConnectionLike>(
        &self,
        conn: &mut C,
        mailbox: &str,
        now_ms: u64,
    ) -> RedisResult<Vec<String>> {
        let all: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(self.keys.watched(mailbox))
            .query_async(conn)
            .await?;
        Ok(all
            .into_iter()
            .filter(|(_, until)| *until >= now_ms)
            .filter_map(|(field, _)| field.strip_prefix("s:").map(str::to_owned))
            .collect())
    }
}
