//! The coordinator's side of the workers: splits the devices over processes (a process holds
//! at most about 19,000 sockets here) and merges their events into one stream.

use std::process::Stdio;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::plan::{Event, Plan};

/// The running workers. Dropping the fleet ends them.
pub struct Fleet {
    children: Vec<Child>,
    /// Held open: a worker runs until its stdin closes.
    _stdins: Vec<ChildStdin>,
    pub events: UnboundedReceiver<Event>,
    pub workers: usize,
}

impl Fleet {
    /// Starts `devices` devices, at most `per_worker` in each process, `rate` per second in all.
    pub async fn start(
        template: &Plan,
        devices: usize,
        per_worker: usize,
        rate: f64,
    ) -> Result<Fleet> {
        let workers = devices.div_ceil(per_worker.max(1)).max(1);
        let exe = std::env::current_exe().context("finding the loadtest binary")?;
        let (tx, events) = unbounded_channel();
        let mut children = Vec::with_capacity(workers);
        let mut stdins = Vec::with_capacity(workers);
        for w in 0..workers {
            let first = devices * w / workers;
            let plan = Plan {
                first,
                count: devices * (w + 1) / workers - first,
                rate: rate / workers as f64,
                ..template.clone()
            };
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {w}"))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            stdin
                .write_all(serde_json::to_string(&plan)?.as_bytes())
                .await?;
            stdin.write_all(b"\n").await?;
            stdins.push(stdin);
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(event) = Event::parse(&line) {
                        let _ = tx.send(event);
                    }
                }
            });
            children.push(child);
        }
        Ok(Fleet {
            children,
            _stdins: stdins,
            events,
            workers,
        })
    }

    /// Whether every worker still runs (a worker that exits early has failed).
    pub fn alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
    }
}
