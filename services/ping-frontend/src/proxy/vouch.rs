//! `AUTH_MODE=upstream`: no account table; the ActiveSync server vouches for credentials.
//!
//! Every 2xx the upstream gives a forwarded request vouches for its credentials, user and
//! device for `AUTH_CACHE_TTL_SECS` (a bearer token never past its `exp`); a 401 or 403 revokes
//! them. The record is in Redis under a digest of the three, so every pod shares it and Redis
//! never holds a password. A Ping whose credentials were never vouched is checked once with a
//! request that changes nothing on the upstream: Settings, UserInformation Get.

use std::time::Duration;

use base64::Engine as _;
use dp_proto::query::EasRequest;
use dp_proto::wbxml::{encode, tag_token, Element};
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use super::observe;
use crate::http::request::Request;
use crate::Shared;

/// How long a check may take, at most: a device waits for it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// What the upstream said of a Ping's credentials.
pub enum Verdict {
    Accepted(String),
    /// Its answer, passed to the device: status and the headers that tell the device what next.
    Refused {
        status: u16,
        headers: Vec<(&'static str, String)>,
    },
    Unavailable(String),
}

fn key(shared: &Shared, authorization: &str, mailbox: &str, device_id: &str) -> String {
    let mut digest = Sha256::new();
    for part in [authorization, mailbox, device_id] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}:vouch:{hex}", shared.config.common.namespace)
}

/// How long a vouch lasts: the setting, and for a bearer token never past its `exp`.
fn lifetime(authorization: &str, ttl: Duration) -> Option<Duration> {
    let Some(token) = authorization.strip_prefix("Bearer ") else {
        return Some(ttl);
    };
    let claims = token.split('.').nth(1).and_then(|payload| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
    });
    let exp = claims
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
        .and_then(|c| c.get("exp").and_then(serde_json::Value::as_u64));
    match exp {
        // An opaque token: the upstream's word for the usual time.
        None => Some(ttl),
        Some(exp) => {
            let left = exp.saturating_sub(dp_runtime::now_ms() / 1000);
            (left > 0).then(|| ttl.min(Duration::from_secs(left)))
        }
    }
}

/// Records what a forwarded request's answer says of its credentials.
pub async fn record(shared: &Shared, request: &Request, query: &EasRequest, status: u16) {
    let Some(authorization) = request.authorization.as_deref() else {
        return;
    };
    let Some(mailbox) = observe::mailbox(Some(authorization), query) else {
        return;
    };
    let key = key(shared, authorization, &mailbox, &query.device_id);
    let mut redis = shared.redis.clone();
    let done = async {
        match status {
            200..=299 => match lifetime(authorization, shared.config.auth_cache_ttl) {
                Some(ttl) => {
                    let secs = ttl.as_secs().max(1);
                    redis.set_ex::<_, _, ()>(&key, &mailbox, secs).await
                }
                None => Ok(()),
            },
            401 | 403 => redis.del::<_, ()>(&key).await,
            _ => Ok(()),
        }
    };
    if !matches!(
        tokio::time::timeout(shared.config.redis_timeout, done).await,
        Ok(Ok(()))
    ) {
        shared.metrics.redis_errors.inc();
        tracing::warn!(%mailbox, device = %query.device_id, "upstream's verdict on credentials not recorded");
    }
}

/// Whether a Ping's credentials are vouched for, asking the upstream once when they are not.
pub async fn authenticate(shared: &Shared, request: &Request, query: &EasRequest) -> Verdict {
    let count = |result| {
        let labels = crate::metrics::ResultLabels { result };
        shared.metrics.auth.get_or_create(&labels).inc();
    };
    let challenge = || Verdict::Refused {
        status: 401,
        headers: vec![("WWW-Authenticate", "Basic realm=\"ActiveSync\"".to_owned())],
    };
    let (Some(authorization), Some(mailbox)) = (
        request.authorization.as_deref(),
        observe::mailbox(request.authorization.as_deref(), query),
    ) else {
        count("missing");
        return challenge();
    };
    let key = key(shared, authorization, &mailbox, &query.device_id);
    let mut redis = shared.redis.clone();
    let cached = redis.get::<_, Option<String>>(&key);
    match tokio::time::timeout(shared.config.redis_timeout, cached).await {
        Ok(Ok(Some(_))) => {
            count("vouched_cached");
            return Verdict::Accepted(mailbox);
        }
        Ok(Ok(None)) => {}
        _ => {
            shared.metrics.redis_errors.inc();
            return Verdict::Unavailable("Redis unavailable".into());
        }
    }
    let answer = match ask(shared, request, query, &mailbox).await {
        Ok(answer) => answer,
        Err(reason) => {
            count("upstream_unavailable");
            return Verdict::Unavailable(reason);
        }
    };
    let status = answer.status().as_u16();
    record(shared, request, query, status).await;
    if answer.status().is_success() {
        count("vouched");
        return Verdict::Accepted(mailbox);
    }
    count("refused");
    tracing::info!(%mailbox, device = %query.device_id, status, "upstream refused the Ping's credentials");
    let mut headers = Vec::new();
    for name in ["WWW-Authenticate", "Retry-After", "X-MS-Location"] {
        if let Some(value) = answer.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, value.to_owned()));
        }
    }
    if status == 401 && headers.is_empty() {
        return challenge();
    }
    Verdict::Refused { status, headers }
}

/// Settings, UserInformation Get: answered by every EAS server from 12.0 on, and changes
/// nothing there.
async fn ask(
    shared: &Shared,
    request: &Request,
    query: &EasRequest,
    mailbox: &str,
) -> Result<reqwest::Response, String> {
    let upstream = shared.upstream.as_ref().ok_or("no upstream")?;
    let user = query.user.clone().unwrap_or_else(|| mailbox.to_owned());
    let mut url = upstream.config.url.clone();
    url.query_pairs_mut()
        .append_pair("Cmd", "Settings")
        .append_pair("User", &user)
        .append_pair("DeviceId", &query.device_id)
        .append_pair("DeviceType", &query.device_type);
    let version = request
        .protocol_version
        .clone()
        .or_else(|| query.version.map(|v| v.as_str().to_owned()))
        .unwrap_or_else(|| "14.1".to_owned());
    let mut call = upstream
        .client
        .post(url)
        .header("MS-ASProtocolVersion", version)
        .header("Content-Type", "application/vnd.ms-sync.wbxml")
        .body(settings_get());
    for (name, value) in request.parts().1 {
        if ["authorization", "x-ms-policykey", "user-agent"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            call = call.header(name, value);
        }
    }
    if let Some(key) = query.policy_key {
        call = call.header("X-MS-PolicyKey", key.to_string());
    }
    let timeout = upstream.config.timeout.min(CHECK_TIMEOUT);
    match tokio::time::timeout(timeout, call.send()).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) => Err(super::forward::error_chain(&err)),
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

fn settings_get() -> Vec<u8> {
    // Settings is code page 18; the tokens come from the one table (ARCHITECTURE.md 1).
    let token = |name| tag_token(18, name).unwrap_or(0x05);
    let root = Element::new(18, token("Settings"))
        .child(Element::new(18, token("UserInformation")).child(Element::new(18, token("Get"))));
    encode(&root).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_never_vouched_past_its_exp() {
        let ttl = Duration::from_secs(300);
        let token = |exp: u64| {
            let claims = format!("{{\"sub\":\"a\",\"exp\":{exp}}}");
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            format!("Bearer h.{payload}.s")
        };
        let now = dp_runtime::now_ms() / 1000;
        assert_eq!(lifetime("Basic YTpi", ttl), Some(ttl));
        assert_eq!(lifetime(&token(now + 10_000), ttl), Some(ttl));
        let soon = lifetime(&token(now + 60), ttl).expect("still valid");
        assert!(soon <= Duration::from_secs(60));
        assert_eq!(lifetime(&token(now - 1), ttl), None, "expired");
        assert_eq!(lifetime("Bearer opaque-token", ttl), Some(ttl));
    }

    #[test]
    fn the_check_is_a_settings_user_information_get() {
        let xml = dp_proto::wbxml::xml::to_xml(
            &dp_proto::wbxml::decode(&settings_get()).expect("decodes"),
        );
        assert!(
            xml.contains("UserInformation") && xml.contains("Get"),
            "{xml}"
        );
    }
}
