//! Heartbeat history: one row per finished Ping, queued without waiting and written in batches
//! by one task. A slow or absent database never delays a Ping: when the queue is full or a batch
//! cannot be written, the rows are dropped and counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use tokio::sync::mpsc;

/// One finished Ping.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub mailbox: String,
    pub device_id: String,
    pub device_type: String,
    pub pod: String,
    pub request_id: u64,
    pub requested_heartbeat: Option<u32>,
    pub effective_heartbeat: Option<u32>,
    /// expired, changed, superseded, client_gone, drained, rejected or error.
    pub outcome: &'static str,
    pub status: Option<u8>,
    pub changed_folders: Vec<String>,
    pub protocol_version: Option<String>,
    pub user_agent: Option<String>,
}

/// Counters the writer keeps, registered by the service.
#[derive(Clone, Default)]
pub struct HistoryMetrics {
    pub written: Counter,
    pub dropped: Counter,
}

/// The request path's handle: `record` never waits.
#[derive(Clone)]
pub struct HistorySink {
    tx: mpsc::Sender<HistoryRow>,
    metrics: HistoryMetrics,
}

impl HistorySink {
    pub fn record(&self, row: HistoryRow) {
        if self.tx.try_send(row).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

/// Settings of the writer.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    pub queue: usize,
    pub batch: usize,
    /// Longest a row waits for its batch to fill.
    pub linger: Duration,
    pub retention_days: u32,
}

/// Stops the writer: what is queued is written, then the task ends.
pub struct WriterHandle {
    finish: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterHandle {
    /// Writes what is queued and waits for the writer, at most `within`.
    pub async fn finish(self, within: Duration) {
        let _ = self.finish.send(());
        let _ = tokio::time::timeout(within, self.task).await;
    }
}

/// Starts the writer task.
pub fn spawn_writer(
    pool: PgPool,
    config: WriterConfig,
    metrics: HistoryMetrics,
) -> (HistorySink, WriterHandle) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let (finish, finished) = tokio::sync::oneshot::channel();
    let sink = HistorySink {
        tx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(write_loop(pool, config, metrics, rx, finished));
    (sink, WriterHandle { finish, task })
}

async fn write_loop(
    pool: PgPool,
    config: WriterConfig,
    metrics: HistoryMetrics,
    mut rx: mpsc::Receiver<HistoryRow>,
    mut finished: tokio::sync::oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(config.batch);
    let mut next_maintenance = tokio::time::Instant::now();
    let mut failing = false;
    let mut finishing = false;
    loop {
        if finishing {
            while batch.len() < config.batch {
                match rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                row = rx.recv() => match row {
                    Some(row) => batch.push(row),
                    None => return,
                },
                _ = &mut finished => {
                    finishing = true;
                    continue;
                }
            }
            let deadline = tokio::time::Instant::now() + config.linger;
            while batch.len() < config.batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(row)) => batch.push(row),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if tokio::time::Instant::now() >= next_maintenance {
            if let Err(err) = maintain_partitions(&pool, Some(config.retention_days)).await {
                tracing::warn!(error = %err, "history partitions could not be maintained");
            }
            next_maintenance = tokio::time::Instant::now() + Duration::from_secs(3600);
        }
        let n = batch.len() as u64;
        match insert(&pool, &batch).await {
            Ok(()) => {
                metrics.written.inc_by(n);
                if failing {
                    tracing::info!("history is being written again");
                    failing = false;
                }
            }
            Err(err) => {
                metrics.dropped.inc_by(n);
                // Logged once per outage, not once per batch.
                if !failing {
                    tracing::warn!(error = %err, rows = n, "history rows dropped: database unavailable");
                    failing = true;
                }
            }
        }
        batch.clear();
    }
}

async fn insert(pool: &PgPool, rows: &[HistoryRow]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO ping_history (started_at, ended_at, mailbox, device_id, pod, request_id,
             requested_heartbeat, effective_heartbeat, outcome, status, changed_folders)
         SELECT s, e, m, d, p, r, rh, eh, o, st, string_to_array(cf, chr(31))
         FROM UNNEST($1::timestamptz[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                     $6::bigint[], $7::int[], $8::int[], $9::text[], $10::smallint[], $11::text[])
              AS t(s, e, m, d, p, r, rh, eh, o, st, cf)",
    )
    .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ended_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.mailbox.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.device_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.pod.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.request_id as i64).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.requested_heartbeat.map(|h| h as i32))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.effective_heartbeat.map(|h| h as i32))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.outcome).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.status.map(i16::from))
            .collect::<Vec<_>>(),
    )
    // Arrays of arrays must be rectangular in PostgreSQL; folder lists are joined with the unit
    // separator, which a folder id (no control characters) cannot hold.
    .bind(
        rows.iter()
            .map(|r| r.changed_folders.join("\u{1f}"))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    upsert_devices(&mut tx, rows).await?;
    tx.commit().await
}

/// One devices row per device of the batch, with its latest sighting.
async fn upsert_devices(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[HistoryRow],
) -> Result<(), sqlx::Error> {
    let mut latest: std::collections::HashMap<(&str, &str), &HistoryRow> = Default::default();
    for row in rows {
        let slot = latest.entry((&row.mailbox, &row.device_id)).or_insert(row);
        if row.ended_at > slot.ended_at {
            *slot = row;
        }
    }
    let rows: Vec<&HistoryRow> = latest.into_values().collect();
    let limit = |r: &&HistoryRow| {
        (r.outcome == "expired")
            .then_some(r.effective_heartbeat)
            .flatten()
            .map(|h| h as i32)
    };
    sqlx::query(
        "INSERT INTO devices AS d (mailbox, device_id, device_type, first_seen, last_seen,
             protocol_version, user_agent, heartbeat_limit)
         SELECT m, i, t, s, e, v, a, l
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                     $6::text[], $7::text[], $8::int[]) AS u(m, i, t, s, e, v, a, l)
         ON CONFLICT (mailbox, device_id) DO UPDATE SET
             device_type = EXCLUDED.device_type,
             last_seen = GREATEST(d.last_seen, EXCLUDED.last_seen),
             protocol_version = COALESCE(EXCLUDED.protocol_version, d.protocol_version),
             user_agent = COALESCE(EXCLUDED.user_agent, d.user_agent),
             heartbeat_limit = GREATEST(d.heartbeat_limit, EXCLUDED.heartbeat_limit)",
    )
    .bind(rows.iter().map(|r| r.mailbox.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.device_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.device_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ended_at).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.protocol_version.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.user_agent.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(limit).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates partitions for today and the next two days, and, given a retention, drops older
/// ones. Under an advisory lock, so pods starting together do not race on DDL.
pub async fn maintain_partitions(pool: &PgPool, retention_days: Option<u32>) -> anyhow::Result<()> {
    const LOCK: i64 = 0x6470_6869_7374; // "dphist"
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await?;
    let result = async {
        sqlx::query("SELECT dp_ensure_history_partitions(2)")
            .execute(&mut *conn)
            .await?;
        if let Some(days) = retention_days {
            let dropped: i32 = sqlx::query_scalar("SELECT dp_drop_history_partitions($1)")
                .bind(days as i32)
                .fetch_one(&mut *conn)
                .await?;
            if dropped > 0 {
                tracing::info!(
                    partitions = dropped,
                    retention_days = days,
                    "old history dropped"
                );
            }
            // A device unseen for as long as history is kept goes with its history: a flood of
            // made-up DeviceIds does not stay in the table for good.
            let forgotten = sqlx::query(
                "DELETE FROM devices WHERE last_seen < now() - make_interval(days => $1)",
            )
            .bind(days as i32)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if forgotten > 0 {
                tracing::info!(
                    devices = forgotten,
                    retention_days = days,
                    "devices unseen for the retention forgotten"
                );
            }
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await;
    Ok(result?)
}

/// The last `limit` history rows of a device, newest first, for `dpctl device show`.
pub async fn recent(
    pool: &PgPool,
    mailbox: &str,
    device_id: &str,
    limit: i64,
) -> Result<Vec<RecentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT started_at, ended_at, pod, request_id, requested_heartbeat, effective_heartbeat,
                outcome, status, changed_folders
         FROM ping_history WHERE mailbox = $1 AND device_id = $2
         ORDER BY ended_at DESC LIMIT $3",
    )
    .bind(mailbox)
    .bind(device_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct RecentRow {
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub pod: String,
    pub request_id: i64,
    pub requested_heartbeat: Option<i32>,
    pub effective_heartbeat: Option<i32>,
    pub outcome: String,
    pub status: Option<i16>,
    pub changed_folders: Vec<String>,
}

/// When the device was first seen (ms since the Unix epoch), if it ever was.
pub async fn first_seen_ms(
    pool: &PgPool,
    mailbox: &str,
    device_id: &str,
) -> Result<Option<u64>, sqlx::Error> {
    let first: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT first_seen FROM devices WHERE mailbox = $1 AND device_id = $2")
            .bind(mailbox)
            .bind(device_id)
            .fetch_optional(pool)
            .await?;
    Ok(first.map(|t| t.timestamp_millis().max(0) as u64))
}

/// Records that `namespace`'s Redis state is in incarnation `epoch`, and answers whether an
/// earlier one was recorded: then Redis lost its state since the namespace began.
pub async fn record_epoch(
    pool: &PgPool,
    namespace: &str,
    epoch: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO redis_epochs (namespace, epoch) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(namespace)
    .bind(epoch)
    .execute(pool)
    .await?;
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM redis_epochs WHERE namespace = $1 AND epoch <> $2)",
    )
    .bind(namespace)
    .bind(epoch)
    .fetch_one(pool)
    .await
}

/// Forgets `namespace`'s recorded Redis incarnations: for a namespace cleared on purpose (a
/// load-test run starting from nothing), so its devices are taken for new again rather than
/// told of their folders as after a loss. Returns how many were recorded.
pub async fn forget_epochs(pool: &PgPool, namespace: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM redis_epochs WHERE namespace = $1")
        .bind(namespace)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
