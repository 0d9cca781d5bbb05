//! The upstream probe (`PROXY_PROBE_SECS`): now and then a parked Ping asks the upstream for
//! a GetItemEstimate of its folders at the SyncKeys the device last got. It changes no sync
//! state there, and it catches what no event told us: an estimate above zero wakes the Ping
//! with Status 2 (a missed event), and an answer that the device must hear (a remote wipe, a
//! new policy: statuses 140, 142-144, HTTP 449; or revoked credentials) ends the Ping with it,
//! so a device that only Pings still hears it (MS-ASPROV).

use std::time::Duration;

use dp_keyspace::Device;
use dp_proto::ping::{PingFolder, PingStatus};
use dp_proto::sync::{estimate_request, Estimates};

use crate::http::request::Request;
use crate::metrics::ResultLabels;
use crate::Shared;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a parked Ping keeps to probe for its device: the request's credentials and identity.
pub struct Credentials {
    authorization: String,
    policy_key: Option<String>,
    user: Option<String>,
    device_type: String,
    protocol_version: String,
    user_agent: Option<String>,
    /// How often this Ping probes (`None` until [`Credentials::every`] says).
    every: Option<Duration>,
}

impl Credentials {
    /// The probe's credentials from a Ping, in proxy mode with the probe on.
    pub fn of(
        shared: &Shared,
        request: &Request,
        query: &dp_proto::query::EasRequest,
    ) -> Option<Box<Credentials>> {
        shared.upstream.as_ref()?.config.probe?;
        let header = |wanted: &str| {
            let (_, headers) = request.parts();
            headers
                .into_iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_owned))
        };
        Some(Box::new(Credentials {
            authorization: request.authorization.clone()?,
            policy_key: header("x-ms-policykey")
                .or_else(|| query.policy_key.map(|k| k.to_string())),
            user: query.user.clone(),
            device_type: query.device_type.clone(),
            protocol_version: request
                .protocol_version
                .clone()
                .or_else(|| query.version.map(|v| v.as_str().to_owned()))
                .unwrap_or_else(|| "14.1".to_owned()),
            user_agent: request.user_agent.clone(),
            every: None,
        }))
    }

    /// Sets how often the Ping probes: less often once its hierarchy is known (a FolderSync
    /// seen through the proxy).
    pub fn every(mut self: Box<Self>, shared: &Shared, hierarchy_known: bool) -> Box<Self> {
        self.every = shared.upstream.as_ref().and_then(|u| {
            let every = u.config.probe?;
            Some(if hierarchy_known {
                every
            } else {
                every.min(u.config.probe_unknown)
            })
        });
        self
    }

    pub fn interval(&self) -> Option<Duration> {
        self.every
    }
}

/// What the upstream said.
pub enum Probed {
    Nothing,
    /// Items wait in these folders.
    Changed(Vec<String>),
    /// A global status the device must hear.
    Status(PingStatus),
    /// An HTTP answer the device must hear (401, 403, 449, 451).
    Http(u16),
}

/// Asks the upstream about `folders` of `device`.
pub async fn run(
    shared: &Shared,
    device: Device<'_>,
    folders: &[PingFolder],
    credentials: &Credentials,
) -> Probed {
    let probed = ask(shared, device, folders, credentials).await;
    let result = match &probed {
        Ok(Probed::Nothing) => "clean",
        Ok(Probed::Changed(_)) => "changed",
        Ok(Probed::Status(_)) => "status",
        Ok(Probed::Http(_)) => "http",
        Err(reason) => {
            tracing::info!(mailbox = %device.mailbox, device = %device.device_id, %reason, "upstream probe failed; the Ping stays parked");
            "failed"
        }
    };
    shared
        .metrics
        .proxy
        .probes
        .get_or_create(&ResultLabels { result })
        .inc();
    probed.unwrap_or(Probed::Nothing)
}

async fn ask(
    shared: &Shared,
    device: Device<'_>,
    folders: &[PingFolder],
    credentials: &Credentials,
) -> Result<Probed, String> {
    let upstream = shared.upstream.as_ref().ok_or("no upstream")?;
    let ids: Vec<&str> = folders.iter().map(|f| f.id.as_str()).collect();
    let keys = sync_keys(shared, device, &ids).await?;
    let known: Vec<(&str, &str)> = ids
        .iter()
        .zip(&keys)
        .filter_map(|(id, key)| Some((*id, key.as_deref()?)))
        .collect();
    if known.is_empty() {
        // No Sync of these folders seen yet: nothing to estimate from.
        return Ok(Probed::Nothing);
    }
    let call = estimate_call(upstream, device, credentials, &known);
    let answer = tokio::time::timeout(PROBE_TIMEOUT, call.send())
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| super::forward::error_chain(&e))?;
    let status = answer.status().as_u16();
    if matches!(status, 401 | 403 | 449 | 451) {
        return Ok(Probed::Http(status));
    }
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let body = answer.bytes().await.map_err(|e| e.to_string())?;
    Ok(estimated(&body))
}

/// The SyncKeys the device last got for these folders, where a Sync of them was seen.
async fn sync_keys(
    shared: &Shared,
    device: Device<'_>,
    ids: &[&str],
) -> Result<Vec<Option<String>>, String> {
    let mut redis = shared.redis.clone();
    let keys = shared.store.sync_keys(&mut redis, device, ids);
    tokio::time::timeout(shared.config.redis_timeout, keys)
        .await
        .map_err(|_| "Redis timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// The GetItemEstimate request, made as the device's own would be.
fn estimate_call(
    upstream: &super::Upstream,
    device: Device<'_>,
    credentials: &Credentials,
    known: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut url = upstream.config.url.clone();
    url.query_pairs_mut()
        .append_pair("Cmd", "GetItemEstimate")
        .append_pair(
            "User",
            credentials.user.as_deref().unwrap_or(device.mailbox),
        )
        .append_pair("DeviceId", device.device_id)
        .append_pair("DeviceType", &credentials.device_type);
    let mut call = upstream
        .client
        .post(url)
        .header("Authorization", &credentials.authorization)
        .header("MS-ASProtocolVersion", &credentials.protocol_version)
        .header("Content-Type", "application/vnd.ms-sync.wbxml")
        .body(estimate_request(known.iter().copied()));
    if let Some(key) = &credentials.policy_key {
        call = call.header("X-MS-PolicyKey", key);
    }
    if let Some(agent) = &credentials.user_agent {
        call = call.header("User-Agent", agent);
    }
    call
}

/// What a GetItemEstimate answer says the device must hear: a status of its own (140 and up),
/// folders with items waiting, or nothing.
fn estimated(body: &[u8]) -> Probed {
    let (estimates, _): (Estimates, bool) = dp_proto::sync::scan(body);
    if let Some(global) = estimates
        .status
        .and_then(|s| u8::try_from(s).ok())
        .and_then(PingStatus::from_code)
        .filter(|s| s.code() >= 140)
    {
        return Probed::Status(global);
    }
    let waiting: Vec<String> = estimates
        .collections
        .into_iter()
        .filter(|(_, status, estimate)| status.is_none_or(|s| s == 1) && estimate.unwrap_or(0) > 0)
        .map(|(id, _, _)| id)
        .collect();
    if waiting.is_empty() {
        Probed::Nothing
    } else {
        Probed::Changed(waiting)
    }
}
