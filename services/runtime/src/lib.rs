//! What every directpush service shares: the drain signal handed to every server and
//! connection, logging, the admin server, listeners with an explicit backlog, and the typed
//! configuration error that exits 64 before any port is bound.
#![forbid(unsafe_code)]

pub mod admin;
pub mod listener;
pub mod logging;
pub mod shutdown;

/// Exit code for bad configuration (EX_USAGE), before any port is bound.
pub const EXIT_CONFIG: i32 = 64;

/// A setting that cannot be used, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

/// Microseconds since the Unix epoch, the unit events carry.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// The machine's host name, the default pod name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "directpush".to_owned())
}

/// Whether a pod name is usable in subjects and owner records: 1-253 of letters, digits,
/// `-`, `_` and `.` (Kubernetes pod names are a subset).
pub fn valid_pod_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
