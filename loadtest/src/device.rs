//! One simulated phone: Ping, read the answer, Ping again, for as long as the worker runs.

use std::sync::Arc;
use std::time::Duration;

use dp_proto::ping::{PingResponse, PingStatus};
use dp_testkit::client::ping_body;
use dp_testkit::Device;
use rand::Rng;
use tokio::sync::mpsc::UnboundedSender;

use crate::plan::{now_us, Auth, Event, Plan};

/// The credentials a device presents.
pub enum Credential {
    Password(String),
    Bearer(jsonwebtoken::EncodingKey),
}

impl Credential {
    pub fn new(auth: &Auth) -> Credential {
        match auth {
            Auth::Basic { password, .. } => Credential::Password(password.clone()),
            Auth::Jwt { secret, .. } => {
                Credential::Bearer(jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
            }
        }
    }
}

/// A bearer token for `mailbox`, valid for a day.
pub fn token(auth: &Auth, key: &jsonwebtoken::EncodingKey, mailbox: &str) -> Option<String> {
    let Auth::Jwt {
        issuer, audience, ..
    } = auth
    else {
        return None;
    };
    let claims = serde_json::json!({
        "email": mailbox, "iss": issuer, "aud": audience, "exp": now_us() / 1_000_000 + 86_400,
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key).ok()
}

/// Everything the devices of one worker share.
pub struct Shared {
    pub plan: Plan,
    pub credential: Credential,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub events: UnboundedSender<Event>,
}

/// Runs device `number` until the process ends.
pub async fn run(number: usize, shared: Arc<Shared>) {
    let plan = &shared.plan;
    let mailbox = plan.auth.mailbox(number);
    let mut at = number % plan.frontends.len();
    let frontend = plan.frontends[at];
    let (password, bearer) = match &shared.credential {
        Credential::Password(p) => (p.as_str(), None),
        Credential::Bearer(key) => ("", token(&plan.auth, key, &mailbox)),
    };
    let mut device = Device::new(frontend, &mailbox, password, &format!("lt{number}"));
    device.bearer = bearer;
    device.tls = shared.tls.as_deref().map(crate::tls::device_connector);
    device.source = Some(plan.sources[number % plan.sources.len()]);
    let mut heartbeat = Adaptive::new(plan);
    let report = |event| {
        let _ = shared.events.send(event);
    };
    if plan.proxy {
        if let Err(kind) = enrol(&mut device).await.map(|()| synced(&report, number)) {
            report(Event::Error {
                device: number,
                kind,
            });
        }
    }
    loop {
        let Some(kind) = ping(&mut device, &mut heartbeat, plan, number, &report).await else {
            continue;
        };
        let timed_out = kind == "timeout";
        report(Event::Error {
            device: number,
            kind,
        });
        if !timed_out {
            // Lost or refused: wait a client-like moment, then try any frontend.
            let jitter = rand::thread_rng().gen_range(0..=plan.jitter_ms.max(1));
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            at = elsewhere(at, plan.frontends.len());
            device.move_to(plan.frontends[at]);
        }
    }
}

/// Proxy mode: a Sync of device `number` was answered now.
fn synced(report: &impl Fn(Event), number: usize) {
    report(Event::Synced {
        device: number,
        at_us: now_us(),
    })
}

/// One Ping and what the device does with its answer; the kind of failure, if it failed.
async fn ping(
    device: &mut Device,
    heartbeat: &mut Adaptive,
    plan: &Plan,
    number: usize,
    report: &impl Fn(Event),
) -> Option<String> {
    let body = ping_body(heartbeat.current, &FOLDERS);
    let wait = Duration::from_secs_f64(f64::from(heartbeat.current) + plan.heartbeat.grace_secs);
    let response = match tokio::time::timeout(wait, device.ping(Some(&body))).await {
        Err(_) => {
            // Nothing came back in time: the connection is dead somewhere on the way.
            device.move_to(device.addr);
            if let Some(seconds) = heartbeat.timed_out() {
                report(Event::Heartbeat {
                    device: number,
                    seconds,
                    at_us: now_us(),
                });
            }
            return Some("timeout".to_owned());
        }
        Ok(Err(e)) => return Some(format!("io-{:?}", e.kind()).to_lowercase()),
        Ok(Ok(response)) if response.status != 200 => {
            return Some(format!("http-{}", response.status))
        }
        Ok(Ok(response)) => response,
    };
    match PingResponse::parse(&response.body) {
        Ok(answer) if answer.status == PingStatus::Changes => {
            report(Event::Woke {
                device: number,
                at_us: now_us(),
            });
            if !plan.proxy {
                return None;
            }
            // Proxy mode: the report stands until the device syncs, as a phone does. The Sync
            // is stamped once answered: a change that reached the server while the Sync was on
            // its way may be in it (the proxy reads its baseline before forwarding), and then
            // no Status 2 is owed for it.
            sync(device, &answer.folders)
                .await
                .map(|()| synced(report, number))
                .err()
        }
        Ok(answer) if answer.status == PingStatus::Expired => {
            if let Some(seconds) = heartbeat.answered() {
                report(Event::Heartbeat {
                    device: number,
                    seconds,
                    at_us: now_us(),
                });
            }
            None
        }
        Ok(answer) => Some(format!("status-{}", answer.status.code())),
        Err(_) => Some("bad-body".to_owned()),
    }
}

/// The folders every device pings; the proxy scenario's upstream serves them.
pub const FOLDERS: [&str; 2] = ["5", "2"];

/// Proxy mode: what a phone does before its first Ping, through the proxy.
async fn enrol(device: &mut Device) -> Result<(), String> {
    use dp_proto::wbxml::{encode, Element};
    let folder_sync = Element::new(7, 0x16).child(Element::with_text(7, 0x12, "0"));
    let body = encode(&folder_sync).map_err(|e| e.to_string())?;
    let answer = device
        .command(dp_proto::query::Command::FolderSync, &body, "")
        .await
        .map_err(|e| format!("foldersync-io-{:?}", e.kind()).to_lowercase())?;
    if answer.status != 200 {
        return Err(format!("foldersync-http-{}", answer.status));
    }
    let ids: Vec<String> = FOLDERS.iter().map(|f| f.to_string()).collect();
    sync(device, &ids).await
}

/// A Sync of `folders` through the proxy (a stand-in upstream answers it).
async fn sync(device: &mut Device, folders: &[String]) -> Result<(), String> {
    use dp_proto::wbxml::{encode, Element};
    let mut collections = Element::new(0, 0x1C);
    for id in folders {
        collections = collections.child(
            Element::new(0, 0x0F)
                .child(Element::with_text(0, 0x0B, "0"))
                .child(Element::with_text(0, 0x12, id.as_str())),
        );
    }
    let body = encode(&Element::new(0, 0x05).child(collections)).map_err(|e| e.to_string())?;
    let answer = device
        .command(dp_proto::query::Command::Sync, &body, "")
        .await
        .map_err(|e| format!("sync-io-{:?}", e.kind()).to_lowercase())?;
    match answer.status {
        200 => Ok(()),
        code => Err(format!("sync-http-{code}")),
    }
}

/// Any frontend but `at`, at random (a load balancer stops sending to a pod that failed).
fn elsewhere(at: usize, len: usize) -> usize {
    if len < 2 {
        return 0;
    }
    let other = rand::thread_rng().gen_range(0..len - 1);
    if other >= at {
        other + 1
    } else {
        other
    }
}

/// The Direct Push heartbeat search.
struct Adaptive {
    current: u32,
    last_answered: Option<u32>,
    step: u32,
    max: u32,
    settled: bool,
}

impl Adaptive {
    fn new(plan: &Plan) -> Adaptive {
        Adaptive {
            current: plan.heartbeat.start,
            last_answered: None,
            step: plan.heartbeat.step,
            max: plan.heartbeat.max.max(plan.heartbeat.start),
            settled: plan.heartbeat.step == 0,
        }
    }

    /// A full heartbeat was answered: it works, so try a longer one. Returns a new heartbeat.
    fn answered(&mut self) -> Option<u32> {
        self.last_answered = Some(self.current);
        if self.settled || self.current >= self.max {
            return None;
        }
        self.current = (self.current + self.step).min(self.max);
        Some(self.current)
    }

    /// A Ping went unanswered: fall back to the last heartbeat that worked and keep it.
    fn timed_out(&mut self) -> Option<u32> {
        let fallback = self.last_answered?;
        self.settled = true;
        (fallback != self.current).then(|| {
            self.current = fallback;
            fallback
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Heartbeat;

    fn plan(start: u32, step: u32, max: u32) -> Plan {
        Plan {
            first: 0,
            count: 1,
            frontends: vec![],
            sources: vec![],
            rate: 1.0,
            auth: Auth::Basic {
                mailboxes: 1,
                password: String::new(),
            },
            tls_ca: None,
            tls12: false,
            heartbeat: Heartbeat {
                start,
                step,
                max,
                grace_secs: 1.0,
            },
            jitter_ms: 0,
            proxy: false,
        }
    }

    #[test]
    fn the_heartbeat_grows_until_a_timeout_then_keeps_the_last_that_worked() {
        let mut h = Adaptive::new(&plan(8, 2, 30));
        assert_eq!(h.answered(), Some(10));
        assert_eq!(h.answered(), Some(12));
        assert_eq!(h.timed_out(), Some(10));
        assert_eq!(h.answered(), None);
        assert_eq!(h.current, 10);
    }

    #[test]
    fn a_failed_frontend_is_not_chosen_again() {
        for at in 0..4 {
            for _ in 0..50 {
                let next = elsewhere(at, 4);
                assert!(next != at && next < 4);
            }
        }
        assert_eq!(elsewhere(0, 1), 0);
    }

    #[test]
    fn a_fixed_heartbeat_never_moves() {
        let mut h = Adaptive::new(&plan(600, 0, 600));
        assert_eq!(h.answered(), None);
        assert_eq!(h.timed_out(), None);
        assert_eq!(h.current, 600);
    }

    #[test]
    fn the_heartbeat_stops_at_its_maximum() {
        let mut h = Adaptive::new(&plan(8, 5, 10));
        assert_eq!(h.answered(), Some(10));
        assert_eq!(h.answered(), None);
    }
}
