//! Changes sent through the watcher's ingest API, and matching them with the wakes the devices
//! heard: latency per change and misses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dp_testkit::client::read_response;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::plan::{now_us, Auth};

/// A change sent: which mailbox, when the request left, and whether it was accepted.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub mailbox: usize,
    pub at_us: u64,
    pub accepted: bool,
}

/// Sends `per_sec` changes a second for random mailboxes of `auth` over `connections`
/// keep-alive connections until `stop` fires; returns what was sent.
pub struct Injector {
    pub sent: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Injector {
    pub fn start(
        ingest: SocketAddr,
        token: Option<String>,
        auth: &Auth,
        devices: usize,
        per_sec: f64,
        connections: usize,
    ) -> Injector {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mailboxes = auth.mailboxes(devices);
        let auth = Arc::new(auth.clone());
        let tasks = (0..connections.max(1))
            .map(|i| {
                let (sent, auth, token) = (sent.clone(), auth.clone(), token.clone());
                let mut stopped = stopped.clone();
                let every = Duration::from_secs_f64(connections.max(1) as f64 / per_sec.max(0.001));
                // The connections' ticks spread over the period, not all at once: changes come
                // one by one at the rate asked, as independent mailboxes' would, instead of in
                // bursts of `connections`.
                let phase = every.mul_f64(i as f64 / connections.max(1) as f64);
                tokio::spawn(async move {
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
                    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
                    loop {
                        tokio::select! {
                            _ = ticker.tick() => {}
                            _ = stopped.changed() => return,
                        }
                        let mailbox = rand::thread_rng().gen_range(0..mailboxes);
                        let body = serde_json::json!({
                            "mailbox": auth.mailbox(mailbox), "folders": ["5"], "kind": "added"
                        })
                        .to_string();
                        let at_us = now_us();
                        let accepted = post(&mut conn, ingest, token.as_deref(), &body).await;
                        if let Ok(mut all) = sent.lock() {
                            all.push(Sent {
                                mailbox,
                                at_us,
                                accepted,
                            });
                        }
                    }
                })
            })
            .collect();
        Injector { sent, tasks, stop }
    }

    /// Stops sending and returns every change sent. A request under way is finished, not
    /// abandoned: the watcher may accept it, and a change it accepted but nobody recorded
    /// would show up as a wake no change needed.
    pub async fn stop(self) -> Vec<Sent> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn post(
    conn: &mut Option<(TcpStream, Vec<u8>)>,
    ingest: SocketAddr,
    token: Option<&str>,
    body: &str,
) -> bool {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /v1/changes HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if conn.is_none() {
        match TcpStream::connect(ingest).await {
            Ok(stream) => *conn = Some((stream, Vec::new())),
            Err(_) => return false,
        }
    }
    let Some((stream, buf)) = conn.as_mut() else {
        return false;
    };
    let answer = async {
        stream.write_all(request.as_bytes()).await?;
        read_response(stream, buf).await
    }
    .await;
    match answer {
        Ok(response) => response.status == 202,
        Err(_) => {
            *conn = None;
            false
        }
    }
}

/// Each accepted change matched with the first wake of each of its mailbox's devices at or
/// after it was sent.
#[derive(Debug, Default)]
pub struct Matched {
    /// Microseconds from the ingest request to the device reading Status 2.
    pub latencies_us: Vec<u64>,
    /// (change sent at, device) pairs the device did not hear of within the window.
    pub misses: Vec<(u64, usize)>,
    /// Proxy mode: changes a device heard of by the Sync it sent after reading an earlier
    /// Status 2, not by a wake: made before that Sync was answered, the change may be in what
    /// the Sync brings (the proxy reads the Sync's baseline before forwarding it, so a change
    /// that reached Redis first is in it), and then no Status 2 is owed for it. They have no
    /// latency of their own.
    pub heard_by_sync: usize,
    pub refused: usize,
    /// Status 2 answers no change needed: no change was waiting for them (what a lost Redis
    /// state or an undelivered answer costs, by design: a duplicate, never a loss).
    pub duplicates: usize,
}

/// Each device's event times, sorted, so the first one at or after a moment is a search.
struct Timeline(HashMap<usize, Vec<u64>>);

impl Timeline {
    fn new(events: &[(usize, u64)]) -> Timeline {
        let mut by_device: HashMap<usize, Vec<u64>> = HashMap::new();
        for &(device, at) in events {
            by_device.entry(device).or_default().push(at);
        }
        for times in by_device.values_mut() {
            times.sort_unstable();
        }
        Timeline(by_device)
    }

    fn first_from(&self, device: usize, from: u64) -> Option<u64> {
        let times = self.0.get(&device)?;
        times.get(times.partition_point(|&t| t < from)).copied()
    }
}

/// Matches after the run, so the order in which wakes and sends reached the coordinator does
/// not matter. `devices_of` lists the devices that watch a mailbox; `syncs` are the proxy
/// mode's Syncs (empty otherwise). A wake is preferred to a Sync, so every wake that came in
/// time gives its latency; a Sync counts only when no wake came within the window.
pub fn matched(
    sent: &[Sent],
    wakes: &[(usize, u64)],
    syncs: &[(usize, u64)],
    devices_of: impl Fn(usize) -> Vec<usize>,
    window_us: u64,
) -> Matched {
    let (wakes_of, syncs_of) = (Timeline::new(wakes), Timeline::new(syncs));
    let in_time = |change: &Sent, at: Option<u64>| at.filter(|at| at - change.at_us <= window_us);
    let mut out = Matched::default();
    let mut needed = std::collections::HashSet::new();
    for change in sent {
        if !change.accepted {
            out.refused += 1;
            continue;
        }
        for device in devices_of(change.mailbox) {
            let heard = wakes_of.first_from(device, change.at_us);
            if let Some(at) = heard {
                needed.insert((device, at));
            }
            if let Some(at) = in_time(change, heard) {
                out.latencies_us.push(at - change.at_us);
            } else if in_time(change, syncs_of.first_from(device, change.at_us)).is_some() {
                out.heard_by_sync += 1;
            } else {
                out.misses.push((change.at_us, device));
            }
        }
    }
    out.latencies_us.sort_unstable();
    out.duplicates = wakes.len().saturating_sub(needed.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(mailbox: usize, at_us: u64) -> Sent {
        Sent {
            mailbox,
            at_us,
            accepted: true,
        }
    }

    #[test]
    fn a_change_is_heard_by_the_first_wake_after_it() {
        let wakes = [(1, 90), (1, 150), (1, 400), (2, 1_000_000)];
        let m = matched(
            &[sent(1, 100), sent(1, 300), sent(2, 10)],
            &wakes,
            &[],
            |m| vec![m],
            1000,
        );
        assert_eq!(m.latencies_us, vec![50, 100]);
        assert_eq!(m.misses, vec![(10, 2)], "heard, but after the window");
        assert_eq!(m.duplicates, 1, "the wake at 90 came before any change");
    }

    #[test]
    fn a_shared_mailbox_wakes_each_device() {
        let wakes = [(1, 110), (11, 130)];
        let m = matched(
            &[
                sent(1, 100),
                Sent {
                    accepted: false,
                    ..sent(1, 5)
                },
            ],
            &wakes,
            &[],
            |m| vec![m, m + 10, m + 20],
            1000,
        );
        assert_eq!(m.latencies_us, vec![10, 30]);
        assert_eq!(m.misses, vec![(100, 21)]);
        assert_eq!(m.refused, 1);
    }

    /// Proxy mode: device 1 read a Status 2 at 90 and sent its Sync at 120; a change sent at
    /// 100 is in that Sync's answer, and no later Status 2 is owed for it.
    #[test]
    fn a_change_made_before_the_sync_that_follows_a_wake_is_heard_by_that_sync() {
        let wakes = [(1, 90), (2, 150)];
        let syncs = [(1, 95), (1, 120), (3, 5_000)];
        let m = matched(
            &[sent(1, 100), sent(2, 100), sent(3, 100)],
            &wakes,
            &syncs,
            |m| vec![m],
            1000,
        );
        assert_eq!(
            m.heard_by_sync, 1,
            "device 1, by its Sync at 120, not the one at 95"
        );
        assert_eq!(m.latencies_us, vec![50], "device 2's wake is preferred");
        assert_eq!(
            m.misses,
            vec![(100, 3)],
            "device 3's Sync came after the window"
        );
    }
}
