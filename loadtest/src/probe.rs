//! Readings taken from the system under load: admin endpoints and /proc.

use std::net::SocketAddr;

use dp_testkit::client::http_get;

/// One unlabelled sample from a Prometheus text page.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let page = http_get(admin, "/metrics").await.ok()?.text();
    page.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Parked Pings summed over frontends' admin ports.
/// Returns the sum and how many frontends did not answer (three tries each): under heavy load
/// an admin port can be slow to accept, and counting it as zero would end a wait too soon.
pub async fn parked(admins: &[SocketAddr]) -> (f64, usize) {
    let (mut total, mut silent) = (0.0, 0);
    for admin in admins {
        let mut reading = None;
        for _ in 0..3 {
            let scrape = metric(*admin, "dp_frontend_parked_pings");
            reading = tokio::time::timeout(std::time::Duration::from_secs(5), scrape)
                .await
                .ok()
                .flatten();
            if reading.is_some() {
                break;
            }
        }
        match reading {
            Some(value) => total += value,
            None => silent += 1,
        }
    }
    (total, silent)
}

/// A histogram's cumulative buckets (upper bound, count), summed over `admins`.
pub async fn histogram(admins: &[SocketAddr], name: &str) -> Vec<(f64, f64)> {
    histogram_of(admins, name, "").await
}

/// The same for one series of a labelled histogram: `labels` as exposed, `stage="bump"`.
pub async fn histogram_of(admins: &[SocketAddr], name: &str, labels: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    // `le` comes first, then the family's labels.
    let tail = match labels {
        "" => "\"} ".to_owned(),
        labels => format!("\",{labels}}} "),
    };
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for admin in admins {
        let Ok(page) = http_get(*admin, "/metrics").await.map(|r| r.text()) else {
            continue;
        };
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((le, count)) = rest.split_once(&tail) else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let count: f64 = count.trim().parse().unwrap_or(0.0);
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(bucket) => bucket.1 += count,
                None => buckets.push((le, count)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The upper bound of the bucket holding quantile `q` (Prometheus-style, without interpolation).
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

pub async fn ready(admin: SocketAddr) -> bool {
    http_get(admin, "/readyz")
        .await
        .is_ok_and(|r| r.status == 200)
}

/// A process's memory and CPU time, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss: u64,
    /// Anonymous resident memory: the heap and stacks, without mapped files.
    pub anon: u64,
    pub cpu_secs: f64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            rss: self.rss + o.rss,
            anon: self.anon + o.anon,
            cpu_secs: self.cpu_secs + o.cpu_secs,
        }
    }
}

/// Usage of one process; `None` once it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        Some(line.split_whitespace().next()?.parse::<u64>().ok()? * 1024)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Usage {
        rss: kib("VmRSS:")?,
        anon: kib("RssAnon:")?,
        // USER_HZ is 100 on every Linux this runs on.
        cpu_secs: ticks / 100.0,
    })
}

/// Summed over processes (those gone count nothing).
pub fn total(pids: &[u32]) -> Usage {
    pids.iter()
        .filter_map(|p| usage(*p))
        .fold(Usage::default(), |a, b| a + b)
}

/// Whether process `pid` holds the listening socket on `port` (TCP, any local address). A port
/// picked free and released can be taken by another process before the service binds it; then
/// the service exits, and whatever holds the port answers in its place.
pub fn listens(pid: u32, port: u16) -> bool {
    let listening: Vec<String> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .any(|inode| listening.contains(&inode))
}

/// The socket inodes listening on `port` in a /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: LISTEN), inode
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            (local.ends_with(&port) && *state == "0A").then(|| inode.to_string())
        })
        .collect()
}

/// Room left in the kernel's connection-tracking table, when it tracks connections
/// (`nf_conntrack` is loaded by any iptables rule, such as the test suite's): `(max, used)`.
/// A full table drops new connections' SYNs, and devices stall in backoff for seconds.
pub fn conntrack() -> Option<(u64, u64)> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("nf_conntrack_max")?, read("nf_conntrack_count")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_known_by_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(listens(std::process::id(), port));
        // A connection's local port is not a listener.
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let client_port = client.local_addr().expect("addr").port();
        assert!(!listens(std::process::id(), client_port));
        drop((client, listener));
        assert!(!listens(std::process::id(), port));
    }

    #[test]
    fn quantiles_come_from_cumulative_buckets() {
        let buckets = [
            (0.001, 50.0),
            (0.002, 90.0),
            (0.004, 99.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(&buckets, 0.5), Some(0.001));
        assert_eq!(bucket_quantile(&buckets, 0.9), Some(0.002));
        assert_eq!(bucket_quantile(&buckets, 0.99), Some(0.004));
        assert_eq!(bucket_quantile(&buckets, 1.0), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&[], 0.5), None);
    }

    #[test]
    fn reads_this_process() {
        let me = usage(std::process::id()).expect("our own /proc entry");
        assert!(me.rss > 0 && me.anon > 0 && me.anon <= me.rss);
        assert!(usage(u32::MAX).is_none());
    }
}
