//! What the cluster tests share: an isolated environment per test (its own `DP_NAMESPACE`,
//! database and stream on the real Postgres, Redis and NATS), frontends and watchers started
//! in-process on runtimes of their own (so killing one drops every socket it had, as a crash
//! does), a device client speaking real EAS over real sockets, and a TCP proxy that can cut a
//! service off.
#![forbid(unsafe_code)]

pub mod client;
pub mod dovecot;
pub mod env;
pub mod haproxy;
pub mod imap;
pub mod namespace;
pub mod processes;
pub mod proxy;
pub mod services;
pub mod stores;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

pub use client::{Device, HttpResponse};
pub use env::Env;
pub use proxy::Proxy;
pub use services::{Frontend, Service, Watcher};

/// Polls `check` until it returns `Some`, or fails the test after `within`, naming `what`.
/// Conditions, not sleeps: the test goes on the moment the condition holds.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
