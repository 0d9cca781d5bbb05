//! What every scenario shares: the cluster, the worker fleet, the events they report, a reading
//! of the cluster every half second, and the park phase.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::charts::{self, Sample};
use crate::cluster::{Cluster, ClusterArgs};
use crate::fleet::Fleet;
use crate::plan::{Event, Heartbeat, Plan};
use crate::probe;
use crate::report::Report;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// New devices per second, over all workers.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Most devices per worker process (each holds one socket per device).
    #[arg(long, default_value_t = 15_000)]
    pub per_worker: usize,
    /// Source addresses (127.1.x.y) devices connect from: each gives 28,232 ephemeral ports.
    #[arg(long, default_value_t = 64)]
    pub sources: usize,
    /// Seconds each Ping parks for.
    #[arg(long, default_value_t = 600)]
    pub heartbeat: u32,
    /// Most milliseconds a device waits before reconnecting after losing its connection.
    #[arg(long, default_value_t = 3_000)]
    pub jitter_ms: u64,
    /// Give up waiting for devices to park once the count has not risen for this long.
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,
    /// Where report.json, the charts and the local cluster's logs go.
    #[arg(long, default_value = "loadtest-out")]
    pub out: PathBuf,
}

/// Says so when the kernel's connection-tracking table has too little room for the run: each
/// device's connection takes an entry, and a closed one keeps it for minutes. Found when runs
/// after the test suite (whose iptables rules load `nf_conntrack`) lost devices mid-park.
fn warn_of_conntrack(devices: usize) {
    let Some((max, used)) = probe::conntrack() else {
        return;
    };
    let wanted = 2 * devices as u64;
    if max.saturating_sub(used) < wanted {
        eprintln!(
            "loadtest: warning: the kernel tracks connections (nf_conntrack) and has room for {} more, \
             fewer than the {wanted} this run may open; a full table drops connections and devices stall \
             (sysctl -w net.netfilter.nf_conntrack_max={})",
            max.saturating_sub(used),
            (used + wanted).next_power_of_two()
        );
    }
}

/// What the workers reported.
#[derive(Default)]
pub struct Collected {
    pub wakes: Vec<(usize, u64)>,
    /// Proxy mode: (device, at µs) of each Sync's answer.
    pub syncs: Vec<(usize, u64)>,
    pub errors: BTreeMap<String, u64>,
    /// (device, seconds, at µs)
    pub heartbeats: Vec<(usize, u32, u64)>,
    pub launched: usize,
}

pub struct Run {
    pub args: RunArgs,
    pub cluster: Cluster,
    pub fleet_size: usize,
    pub collected: Arc<Mutex<Collected>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    fleet: Option<Fleet>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Run {
    /// Starts the cluster (if local) and a reading of it every half second; devices come with
    /// [`Run::launch`].
    pub async fn start(args: &RunArgs) -> Result<Run> {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        warn_of_conntrack(args.devices);
        let cluster = Cluster::start(&args.cluster, &args.out).await?;
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let admins: Vec<SocketAddr> = cluster.frontends.iter().filter_map(|n| n.admin).collect();
        let pids = cluster.pids();
        let sampler = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(500));
                loop {
                    ticker.tick().await;
                    let sample = Sample {
                        secs: started.elapsed().as_secs_f64(),
                        // A frontend that does not answer (or was killed) counts none here.
                        parked: probe::parked(&admins).await.0,
                        rss_mb: probe::total(&pids).rss as f64 / 1e6,
                    };
                    if let Ok(mut all) = samples.lock() {
                        all.push(sample);
                    }
                }
            })
        };
        Ok(Run {
            args: args.clone(),
            cluster,
            fleet_size: 0,
            collected: Arc::default(),
            samples,
            fleet: None,
            tasks: vec![sampler],
        })
    }

    /// Starts the devices, connecting to `targets` (default: the frontends).
    pub async fn launch(
        &mut self,
        heartbeat: Heartbeat,
        targets: Option<Vec<SocketAddr>>,
    ) -> Result<()> {
        let args = &self.args;
        let plan = Plan {
            first: 0,
            count: 0,
            frontends: targets.unwrap_or_else(|| self.cluster.device_addrs()),
            sources: sources(args.sources),
            rate: args.rate,
            auth: self.cluster.auth.clone(),
            tls_ca: self.cluster.tls_ca.clone(),
            tls12: args.cluster.tls12,
            heartbeat,
            jitter_ms: args.jitter_ms,
            proxy: args.cluster.upstream.is_some(),
        };
        let mut fleet = Fleet::start(&plan, args.devices, args.per_worker, args.rate).await?;
        self.fleet_size = fleet.workers;
        let mut events =
            std::mem::replace(&mut fleet.events, tokio::sync::mpsc::unbounded_channel().1);
        let collected = self.collected.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Ok(mut c) = collected.lock() else { return };
                match event {
                    Event::Woke { device, at_us } => c.wakes.push((device, at_us)),
                    Event::Synced { device, at_us } => c.syncs.push((device, at_us)),
                    Event::Error { kind, .. } => *c.errors.entry(kind).or_default() += 1,
                    Event::Heartbeat {
                        device,
                        seconds,
                        at_us,
                    } => c.heartbeats.push((device, seconds, at_us)),
                    Event::Launched { .. } => c.launched += 1,
                }
            }
        }));
        self.fleet = Some(fleet);
        Ok(())
    }

    /// Parked Pings now; `None` when a frontend did not answer, so the count is unknown.
    pub async fn parked(&self) -> Option<f64> {
        match self.cluster.parked().await {
            (total, 0) => Some(total),
            _ => None,
        }
    }

    /// Waits until `want` Pings are parked, or the count stalls; returns the highest count read
    /// (readings with a silent frontend are skipped).
    pub async fn wait_parked(&mut self, want: f64) -> Result<f64> {
        let (mut best, mut since) = (0.0, Instant::now());
        loop {
            let now = self.parked().await;
            if let Some(n) = now.filter(|n| *n >= want) {
                return Ok(n);
            }
            if let Some(n) = now.filter(|n| *n > best) {
                (best, since) = (n, Instant::now());
            } else if since.elapsed() > Duration::from_secs(self.args.stall_secs) {
                return Ok(best);
            }
            if let Some(fleet) = self.fleet.as_mut() {
                if !fleet.alive() {
                    bail!("a worker process exited; run `loadtest worker` by hand to see why");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Launches the devices and waits until they are all parked, reporting the connect rate,
    /// the frontends' set-up cost in CPU and their memory per parked Ping.
    pub async fn park(&mut self, heartbeat: Heartbeat, report: &mut Report) -> Result<f64> {
        let n = self.args.devices as f64;
        let pids = self.cluster.pids();
        let before = probe::total(&pids);
        let t0 = Instant::now();
        self.launch(heartbeat, None).await?;
        let half = self.wait_parked(n / 2.0).await?;
        let at_half = probe::total(&pids);
        let nodes_half = self.per_frontend().await;
        let parked = self.wait_parked(n).await?;
        let secs = t0.elapsed().as_secs_f64();
        let end = probe::total(&pids);
        let nodes_end = self.per_frontend().await;
        report.set("devices", self.args.devices);
        report.set("workers", self.fleet_size);
        report.set("frontends", self.cluster.frontends.len());
        report.set("parked", parked);
        report.set("park_secs", round(secs));
        report.set("connect_rate_per_s", round(parked / secs));
        if parked < 1.0 {
            bail!(
                "nothing parked; are the frontends ready? (see {})",
                self.args.out.join("logs").display()
            );
        }
        if !pids.is_empty() {
            let grown = (parked - half).max(1.0);
            report.set("frontend_memory", json!({
                "rss_mb": round(end.rss as f64 / 1e6),
                "rss_bytes_per_parked_slope": (end.rss.saturating_sub(at_half.rss) as f64 / grown).round(),
                "heap_bytes_per_parked_slope": (end.anon.saturating_sub(at_half.anon) as f64 / grown).round(),
                "rss_bytes_per_parked_overall": (end.rss.saturating_sub(before.rss) as f64 / parked).round(),
            }));
            // Each frontend's own slope: its RSS growth over its own parked growth.
            let each: Vec<_> = nodes_half
                .iter()
                .zip(&nodes_end)
                .filter_map(|((name, u0, p0), (_, u1, p1))| {
                    let (u0, u1, p0, p1) = ((*u0)?, (*u1)?, (*p0)?, (*p1)?);
                    Some(json!({
                        "frontend": name,
                        "parked": p1,
                        "rss_mb": round(u1.rss as f64 / 1e6),
                        "rss_bytes_per_parked_slope": (u1.rss.saturating_sub(u0.rss) as f64 / (p1 - p0).max(1.0)).round(),
                        "heap_bytes_per_parked_slope": (u1.anon.saturating_sub(u0.anon) as f64 / (p1 - p0).max(1.0)).round(),
                    }))
                })
                .collect();
            report.set("frontend_memory_each", json!(each));
            let cpu = end.cpu_secs - before.cpu_secs;
            report.set("frontend_cpu_secs", round(cpu));
            report.set(
                "ping_setups_per_frontend_cpu_sec",
                round(parked / cpu.max(0.01)),
            );
        }
        Ok(parked)
    }

    /// Each frontend's name, memory and parked count now (where known).
    async fn per_frontend(&self) -> Vec<(String, Option<probe::Usage>, Option<f64>)> {
        let mut out = Vec::new();
        for node in &self.cluster.frontends {
            let parked = match node.admin {
                Some(admin) => probe::metric(admin, "dp_frontend_parked_pings").await,
                None => None,
            };
            out.push((node.name.clone(), node.pid.and_then(probe::usage), parked));
        }
        out
    }

    /// Stops the devices and a local cluster (clearing its namespace), adds what they
    /// reported, draws the timeline charts.
    pub async fn finish(mut self, mut report: Report) -> Result<serde_json::Value> {
        self.fleet = None;
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.cluster.stop().await {
            // The figures are still worth their report; the next local run clears again.
            eprintln!("loadtest: the local cluster's state stays: {e:#}");
        }
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(c) = self.collected.lock() {
            report.set("errors_by_kind", json!(c.errors));
        }
        if let Err(e) = charts::timeline(&self.args.out, &samples) {
            eprintln!("no timeline charts: {e:#}");
        }
        report.set("timeline", json!(samples));
        report.finish(&self.args.out)
    }
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// 127.1.x.y: loopback addresses any process may bind without configuration.
fn sources(count: usize) -> Vec<IpAddr> {
    (0..count.max(1))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)))
        .collect()
}
