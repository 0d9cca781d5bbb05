//! Basic authentication against the accounts table, with a bounded cache of verified
//! credentials so a reconnect storm does not re-run argon2 for every device.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dp_proto::ids::canonical_mailbox;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::metrics::{Metrics, ResultLabels};

/// Why a request is not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No usable `Authorization: Basic` header: 401.
    Missing,
    /// Unknown account, wrong password or disabled account: 401, the same answer for each.
    Rejected,
    /// The accounts cannot be read right now: 503 + Retry-After.
    Unavailable,
    /// Too many failed logins from this address or to this account: 503 + Retry-After.
    Throttled(Duration),
}

/// Failed-login budgets.
pub struct Throttle {
    pub per_source: crate::limits::RateWindow,
    pub per_account: crate::limits::RateWindow,
    /// Logins that may wait for a password check on this pod (AUTH_VERIFY_QUEUE).
    pub verify_queue: usize,
}

struct Verified {
    mailbox: String,
    at: Instant,
}

/// What the cache knows of credentials.
enum Known {
    /// Verified within AUTH_CACHE_TTL_SECS.
    Fresh(String),
    /// Verified before, longer ago: checked again, but not slowed as a guess would be.
    Stale,
    Unknown,
}

pub struct Auth {
    pool: PgPool,
    /// Keyed by a salted digest of name and password, so the cache holds no password.
    cache: Mutex<HashMap<[u8; 32], Verified>>,
    salt: [u8; 16],
    capacity: usize,
    ttl: Duration,
    /// argon2 is CPU-bound: verified on dedicated threads, off the async ones.
    verifier: dp_db::accounts::Verifier,
    throttle: Throttle,
    jwt: Option<crate::jwt::JwtSettings>,
    /// One verification at a time per credentials: when a pod is lost, its devices reconnect
    /// to the others together, and every device of a mailbox would otherwise pay for its own
    /// argon2 before the first result reaches the cache.
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

/// Takes a key's turn out of [`Auth::in_flight`] once nobody waits for it any more.
struct Turn<'a> {
    auth: &'a Auth,
    key: [u8; 32],
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self
            .auth
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: no one else holds or waits for this gate.
        if Arc::strong_count(&self.gate) <= 2 {
            map.remove(&self.key);
        }
    }
}

/// A hash to verify against when the account does not exist, so that answer takes as long as
/// a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        dp_db::accounts::hash_password("directpush-decoy-password").unwrap_or_default()
    })
}

impl Auth {
    pub fn new(
        pool: PgPool,
        capacity: usize,
        ttl: Duration,
        throttle: Throttle,
        jwt: Option<crate::jwt::JwtSettings>,
    ) -> std::io::Result<Auth> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Auth {
            pool,
            cache: Mutex::new(HashMap::new()),
            salt: rand::random(),
            capacity,
            ttl,
            verifier: dp_db::accounts::Verifier::spawn(parallel, throttle.verify_queue)?,
            throttle,
            jwt,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    fn digest(&self, name: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    /// The mailbox the credentials belong to.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        source: std::net::IpAddr,
        metrics: &Metrics,
    ) -> Result<String, AuthError> {
        let count = |result| {
            metrics.auth.get_or_create(&ResultLabels { result }).inc();
        };
        if let Some(jwt) = &self.jwt {
            return self.bearer(jwt, header, source, &count);
        }
        let Some((name, password)) = header.and_then(parse_basic) else {
            count("missing");
            return Err(AuthError::Missing);
        };
        let name = canonical_mailbox(&name);
        let key = self.digest(&name, &password);
        if let Known::Fresh(mailbox) = self.cached(&key) {
            count("cache_hit");
            return Ok(mailbox);
        }
        let turn = Turn {
            auth: self,
            key,
            gate: self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default()
                .clone(),
        };
        let _held = turn.gate.lock().await;
        // Whoever went first may have verified these very credentials meanwhile.
        let known = match self.cached(&key) {
            Known::Fresh(mailbox) => {
                count("cache_hit");
                return Ok(mailbox);
            }
            known => known,
        };
        let verified_before = matches!(known, Known::Stale);
        self.verify(name, password, source, verified_before, &count)
            .await
            .inspect(|name| self.remember(key, name))
    }

    /// Checks a password the cache could not vouch for: against the throttles, then the
    /// accounts' database and its hash.
    async fn verify(
        &self,
        name: String,
        password: String,
        source: std::net::IpAddr,
        verified_before: bool,
        count: &(dyn Fn(&'static str) + Sync),
    ) -> Result<String, AuthError> {
        // Past a budget, refuse before spending a database query and an argon2 verification:
        // the same answer whether or not the account exists. The per-account budget slows
        // only credentials never verified: someone guessing an account's password must not
        // lock out its working devices when their cache entries run out.
        let source_key = source.to_string();
        let account_key = format!("account:{name}");
        if let Some(wait) = self.throttle.per_source.over(&source_key).or_else(|| {
            (!verified_before)
                .then(|| self.throttle.per_account.over(&account_key))
                .flatten()
        }) {
            count("throttled");
            return Err(AuthError::Throttled(wait));
        }
        let stored = match dp_db::accounts::credentials(&self.pool, &name).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %err, "accounts unavailable; answering 503");
                count("unavailable");
                return Err(AuthError::Unavailable);
            }
        };
        let (hash, usable) = match stored {
            Some((hash, disabled)) => (hash, !disabled),
            None => (decoy_hash().to_owned(), false),
        };
        let Some(matches) = self.verifier.verify(hash, password).await else {
            count("busy");
            tracing::info!(account = %name, "login turned away: AUTH_VERIFY_QUEUE logins already wait for a password check");
            return Err(AuthError::Throttled(Duration::from_secs(1)));
        };
        if !(matches && usable) {
            self.throttle.per_source.record(&source_key);
            self.throttle.per_account.record(&account_key);
            count("rejected");
            return Err(AuthError::Rejected);
        }
        count("verified");
        Ok(name)
    }

    /// The accounts' database (the devices table lives there too).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// The WWW-Authenticate challenge of a 401.
    pub fn challenge(&self) -> &'static str {
        if self.jwt.is_some() {
            "Bearer realm=\"ActiveSync\""
        } else {
            "Basic realm=\"ActiveSync\""
        }
    }

    /// A bearer token: cheap to verify, so neither cached nor sent to the verifier threads;
    /// failures still count against the source's budget.
    fn bearer(
        &self,
        jwt: &crate::jwt::JwtSettings,
        header: Option<&str>,
        source: std::net::IpAddr,
        count: &dyn Fn(&'static str),
    ) -> Result<String, AuthError> {
        let token = header
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            count("missing");
            return Err(AuthError::Missing);
        };
        let source_key = source.to_string();
        if let Some(wait) = self.throttle.per_source.over(&source_key) {
            count("throttled");
            return Err(AuthError::Throttled(wait));
        }
        match jwt.verify(token) {
            Some(mailbox) => {
                count("verified");
                Ok(mailbox)
            }
            None => {
                self.throttle.per_source.record(&source_key);
                count("rejected");
                Err(AuthError::Rejected)
            }
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Known {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(key) {
            Some(v) if v.at.elapsed() < self.ttl => Known::Fresh(v.mailbox.clone()),
            Some(_) => Known::Stale,
            None => Known::Unknown,
        }
    }

    fn remember(&self, key: [u8; 32], mailbox: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.capacity {
            // Expired entries first; if none, any entry: a miss costs one verification.
            let ttl = self.ttl;
            cache.retain(|_, v| v.at.elapsed() < ttl);
            if cache.len() >= self.capacity {
                if let Some(victim) = cache.keys().next().copied() {
                    cache.remove(&victim);
                }
            }
        }
        cache.insert(
            key,
            Verified {
                mailbox: mailbox.to_owned(),
                at: Instant::now(),
            },
        );
    }
}

/// `Basic base64(name:password)` -> (name, password).
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    if name.is_empty() {
        return None;
    }
    Some((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_headers() {
        assert_eq!(
            parse_basic("Basic YWxpY2U6czNjcjN0OndpdGg6Y29sb25z"),
            Some(("alice".into(), "s3cr3t:with:colons".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic OnB3"), None, "empty user name");
    }
}
