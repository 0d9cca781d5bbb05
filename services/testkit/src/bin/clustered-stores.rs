//! `clustered-stores SETTINGS`: starts a Redis Cluster (three primaries, three replicas, behind
//! a password) and a three-node NATS cluster with JetStream on free ports, writes the settings
//! that point the services and the tests at them to the file SETTINGS (`NAME=value` lines, for
//! `set -a; . SETTINGS`), and keeps them up until SIGINT or SIGTERM. `scripts/on-clustered-stores.sh`
//! runs the cluster tests this way.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use dp_testkit::stores::{LocalNatsCluster, LocalRedisCluster};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: clustered-stores SETTINGS")?;
    // A node that cannot take its ports (another process took one first) never answers: the
    // whole cluster is started again on new ones, up to three times.
    let mut attempt = 1;
    let redis = loop {
        match LocalRedisCluster::start("cluster-s3cret").await {
            Ok(redis) => break redis,
            Err(err) if attempt < 3 => {
                eprintln!("clustered-stores: {err:#}; starting the Redis Cluster again");
                attempt += 1;
            }
            Err(err) => return Err(err.context("starting a Redis Cluster")),
        }
    };
    let nats = LocalNatsCluster::start()
        .await
        .context("starting a NATS cluster")?;
    let settings = format!(
        "REDIS_MODE=cluster\nREDIS_URL={}\nNATS_URL={}\nCHANGES_REPLICAS=3\n",
        redis.url(),
        nats.url()
    );
    // Whole or not at all: the script waits for the file to appear.
    let partial = format!("{path}.partial");
    std::fs::write(&partial, settings).with_context(|| format!("writing {partial}"))?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {path}"))?;
    eprintln!("clustered-stores: Redis Cluster and NATS cluster up; settings in {path}");
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Dropping them kills every node and removes their directories.
    drop((redis, nats));
    Ok(())
}
