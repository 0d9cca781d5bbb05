//! What a worker process is told to do, and what it reports back: the only contract between
//! the coordinator and its workers (one JSON line in, one text line per event out).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A worker's share of the devices and how they behave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Devices `first..first + count` (global numbers).
    pub first: usize,
    pub count: usize,
    /// Where devices connect; each starts on `device % len` and moves at random on failure,
    /// as behind a DNS round robin or a load balancer.
    pub frontends: Vec<SocketAddr>,
    pub sources: Vec<IpAddr>,
    /// New devices per second for this worker.
    pub rate: f64,
    pub auth: Auth,
    pub tls_ca: Option<PathBuf>,
    pub heartbeat: Heartbeat,
    /// Most milliseconds a device waits before reconnecting after losing its connection
    /// (uniformly random, like real clients' jitter).
    pub jitter_ms: u64,
    /// Proxy mode: enrol with FolderSync and Sync, and Sync what each Status 2 reports.
    #[serde(default)]
    pub proxy: bool,
    /// The devices speak TLS 1.2 only (older phones), not 1.3.
    #[serde(default)]
    pub tls12: bool,
}

/// How devices authenticate; the mailbox of each device follows from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Auth {
    /// `lt-<device % mailboxes>@load.test` with one shared password.
    Basic { mailboxes: usize, password: String },
    /// One mailbox per device, `lt-<device>@load.test`, in an HS256 bearer token.
    Jwt {
        secret: String,
        issuer: String,
        audience: String,
    },
}

impl Auth {
    pub fn mailboxes(&self, devices: usize) -> usize {
        match self {
            Auth::Basic { mailboxes, .. } => (*mailboxes).min(devices).max(1),
            Auth::Jwt { .. } => devices,
        }
    }

    pub fn mailbox(&self, device: usize) -> String {
        match self {
            Auth::Basic { mailboxes, .. } => format!("lt-{}@load.test", device % mailboxes),
            Auth::Jwt { .. } => format!("lt-{device}@load.test"),
        }
    }
}

/// The heartbeat a device asks for, and how it adapts (MS Direct Push: a Ping that times out
/// without an answer drops the heartbeat to the last one that was answered; an answered one
/// that ran its full length raises it by a step).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Seconds asked for at first.
    pub start: u32,
    /// Seconds added after each full heartbeat answered; 0 keeps it fixed.
    pub step: u32,
    pub max: u32,
    /// Seconds past the heartbeat a device waits for an answer before giving up on it.
    pub grace_secs: f64,
}

/// What a worker reports, one line each.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `W <device> <unix µs>`: the device read a Status 2.
    Woke { device: usize, at_us: u64 },
    /// `S <device> <unix µs>`: proxy mode, a Sync of the device's was answered 200.
    Synced { device: usize, at_us: u64 },
    /// `E <device> <kind>`: a failed Ping, by kind.
    Error { device: usize, kind: String },
    /// `H <device> <seconds> <unix µs>`: the device changed its heartbeat.
    Heartbeat {
        device: usize,
        seconds: u32,
        at_us: u64,
    },
    /// `L <unix µs>`: every device of this worker has been started.
    Launched { at_us: u64 },
}

impl Event {
    pub fn line(&self) -> String {
        match self {
            Event::Woke { device, at_us } => format!("W {device} {at_us}"),
            Event::Synced { device, at_us } => format!("S {device} {at_us}"),
            Event::Error { device, kind } => format!("E {device} {kind}"),
            Event::Heartbeat {
                device,
                seconds,
                at_us,
            } => format!("H {device} {seconds} {at_us}"),
            Event::Launched { at_us } => format!("L {at_us}"),
        }
    }

    pub fn parse(line: &str) -> Option<Event> {
        let mut words = line.split_whitespace();
        let tag = words.next()?;
        let mut number = || words.next()?.parse::<u64>().ok();
        Some(match tag {
            "W" => Event::Woke {
                device: number()? as usize,
                at_us: number()?,
            },
            "S" => Event::Synced {
                device: number()? as usize,
                at_us: number()?,
            },
            "H" => Event::Heartbeat {
                device: number()? as usize,
                seconds: u32::try_from(number()?).ok()?,
                at_us: number()?,
            },
            "L" => Event::Launched { at_us: number()? },
            "E" => {
                let device = words.next()?.parse().ok()?;
                Event::Error {
                    device,
                    kind: words.next()?.to_owned(),
                }
            }
            _ => return None,
        })
    }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_their_line() {
        for event in [
            Event::Woke {
                device: 7,
                at_us: 1_700_000_000_000_001,
            },
            Event::Error {
                device: 3,
                kind: "http-503".into(),
            },
            Event::Heartbeat {
                device: 9,
                seconds: 480,
                at_us: 5,
            },
            Event::Launched { at_us: 11 },
            Event::Synced {
                device: 4,
                at_us: 12,
            },
        ] {
            assert_eq!(Event::parse(&event.line()), Some(event));
        }
        assert_eq!(Event::parse("W seven 1"), None);
        assert_eq!(Event::parse("Q 1"), None);
    }

    #[test]
    fn basic_mailboxes_are_shared_and_jwt_ones_are_not() {
        let basic = Auth::Basic {
            mailboxes: 10,
            password: "p".into(),
        };
        assert_eq!(basic.mailbox(13), basic.mailbox(3));
        assert_eq!(basic.mailboxes(4), 4);
        let jwt = Auth::Jwt {
            secret: "s".into(),
            issuer: "i".into(),
            audience: "a".into(),
        };
        assert_ne!(jwt.mailbox(13), jwt.mailbox(3));
        assert_eq!(jwt.mailboxes(4), 4);
    }
}
