//! Frontends and watchers in the test process, each on a runtime of its own: `kill` drops the
//! runtime with everything in it (connections close as when a process dies), `stop` drains.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use dp_runtime::shutdown::Shutdown;
use tokio::sync::oneshot;

use crate::client::http_get;
use crate::env::Env;
use crate::wait_for;

/// A running service.
struct Running {
    stop: Option<Shutdown>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn<F, Fut>(name: String, run: F) -> Running
    where
        F: FnOnce(dp_runtime::shutdown::Drain) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let (stop, drain) = Shutdown::new();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("service runtime");
                runtime.block_on(async move {
                    tokio::select! {
                        result = run(drain) => {
                            if let Err(err) = result {
                                eprintln!("{name} stopped: {err:#}");
                            }
                        }
                        _ = kill_rx => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("service thread");
        Running {
            stop: Some(stop),
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.join();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.signal();
        }
        self.join();
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn local_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds a local port");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Command-line style settings: defaults for tests, with `overrides` replacing or adding.
fn args(program: &str, defaults: Vec<(&str, String)>, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut settings: Vec<(String, String)> = defaults
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for (key, value) in overrides {
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = (*value).to_owned(),
            None => settings.push(((*key).to_owned(), (*value).to_owned())),
        }
    }
    let mut out = vec![program.to_owned()];
    for (key, value) in settings {
        out.push(key);
        out.push(value);
    }
    out
}

async fn wait_ready(admin: SocketAddr, what: &str) {
    wait_for(
        &format!("{what} to report ready"),
        Duration::from_secs(20),
        || async move {
            match http_get(admin, "/readyz").await {
                Ok(response) if response.status == 200 => Some(()),
                _ => None,
            }
        },
    )
    .await
}

/// Reads one sample from a Prometheus text page: `series` is the name with its labels as
/// exposed, e.g. `dp_frontend_pings_total{outcome="changed",status="2"}`.
pub fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A running frontend or watcher.
pub struct Service {
    pub pod: String,
    /// Devices' address (frontend) or the ingest API (watcher).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    running: Running,
}

impl Service {
    /// Binds its ports, starts `run` on a runtime of its own, and waits until it is ready.
    async fn launch<F, Fut>(
        kind: &str,
        pod: &str,
        argv: impl FnOnce(SocketAddr, SocketAddr) -> Vec<String>,
        run: F,
    ) -> Service
    where
        F: FnOnce(
                Vec<String>,
                tokio::net::TcpListener,
                tokio::net::TcpListener,
                dp_runtime::shutdown::Drain,
            ) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let (listener, addr) = local_listener();
        let (admin_listener, admin) = local_listener();
        let argv = argv(addr, admin);
        drop(dp_runtime::telemetry::init(
            "test",
            dp_runtime::logging::LogFormat::Text,
        ));
        let running = Running::spawn(format!("{kind}-{pod}"), move |drain| async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let admin = tokio::net::TcpListener::from_std(admin_listener)?;
            run(argv, listener, admin, drain).await
        });
        wait_ready(admin, &format!("{kind} {pod}")).await;
        Service {
            pod: pod.to_owned(),
            addr,
            admin,
            running,
        }
    }

    /// Ends it abruptly, as a crash or `kill -9`.
    pub fn kill(&mut self) {
        self.running.kill();
    }

    /// Signals the drain and waits for it to finish.
    pub fn stop(&mut self) {
        self.running.stop();
    }

    pub async fn metrics(&self) -> String {
        let response = http_get(self.admin, "/metrics")
            .await
            .expect("metrics answer");
        String::from_utf8_lossy(&response.body).into_owned()
    }

    pub async fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series)
    }
}

#[derive(Parser)]
struct FrontendCli {
    #[command(flatten)]
    args: ping_frontend::FrontendArgs,
}

#[derive(Parser)]
struct WatcherCli {
    #[command(flatten)]
    args: mailbox_watcher::WatcherArgs,
}

/// A frontend; see [`Service`].
pub struct Frontend(Service);

impl Frontend {
    /// Starts a frontend named `pod` and waits until it is ready. Heartbeats down to 1 s are
    /// allowed so tests need not wait a minute.
    pub async fn start(env: &Env, pod: &str, overrides: &[(&str, &str)]) -> Frontend {
        let defaults = |addr: SocketAddr, admin: SocketAddr| {
            args(
                "ping-frontend",
                vec![
                    ("--namespace", env.namespace.clone()),
                    ("--pod-name", pod.to_owned()),
                    ("--nats-url", env.nats_url.clone()),
                    ("--redis-url", env.redis_url.clone()),
                    ("--redis-mode", env.redis_mode.clone()),
                    ("--database-url", env.database_url.clone()),
                    ("--listen-addr", addr.to_string()),
                    ("--admin-addr", admin.to_string()),
                    ("--min-heartbeat", "1".into()),
                    ("--drain-delay-secs", "0".into()),
                    ("--drain-secs", "1".into()),
                    ("--log-format", "text".into()),
                    ("--device-state-ttl-days", "1".into()),
                    // Watchers send wakes here once a link is open (the first over NATS).
                    ("--wake-listen-addr", "127.0.0.1:0".into()),
                ],
                overrides,
            )
        };
        Frontend(
            Service::launch(
                "frontend",
                pod,
                defaults,
                |argv, listener, admin, drain| async move {
                    let config = FrontendCli::try_parse_from(argv)?.args.check()?;
                    ping_frontend::run(config, listener, admin, drain).await
                },
            )
            .await,
        )
    }
}

/// A watcher with both roles unless told otherwise; see [`Service`].
pub struct Watcher(Service);

impl Watcher {
    pub async fn start(env: &Env, pod: &str, overrides: &[(&str, &str)]) -> Watcher {
        let defaults = |addr: SocketAddr, admin: SocketAddr| {
            args(
                "mailbox-watcher",
                vec![
                    ("--namespace", env.namespace.clone()),
                    ("--pod-name", pod.to_owned()),
                    ("--nats-url", env.nats_url.clone()),
                    ("--redis-url", env.redis_url.clone()),
                    ("--redis-mode", env.redis_mode.clone()),
                    ("--listen-addr", addr.to_string()),
                    ("--admin-addr", admin.to_string()),
                    ("--ingest-token", env.ingest_token.clone()),
                    ("--log-format", "text".into()),
                    ("--ack-wait-secs", "3".into()),
                    ("--device-state-ttl-days", "1".into()),
                ],
                overrides,
            )
        };
        Watcher(
            Service::launch(
                "watcher",
                pod,
                defaults,
                |argv, listener, admin, drain| async move {
                    let config = WatcherCli::try_parse_from(argv)?.args.check()?;
                    mailbox_watcher::run(config, Some(listener), admin, drain).await
                },
            )
            .await,
        )
    }

    /// POSTs a change (or a JSON array of them) to the ingest API with the test token.
    pub async fn ingest(&self, env: &Env, body: &serde_json::Value) -> crate::HttpResponse {
        crate::client::post_json(self.addr, "/v1/changes", Some(&env.ingest_token), body)
            .await
            .expect("ingest API answers")
    }

    /// One `added` change of `folders` in `mailbox`, which must be accepted.
    pub async fn change(&self, env: &Env, mailbox: &str, folders: &[&str]) {
        let response = self
            .ingest(
                env,
                &serde_json::json!({"mailbox": mailbox, "folders": folders}),
            )
            .await;
        assert_eq!(response.status, 202, "change accepted: {}", response.text());
    }

    /// Waits until this watcher has dispatched and acknowledged at least `count` changes.
    pub async fn wait_dispatched(&self, count: u64) {
        crate::wait_for(
            &format!("{count} changes dispatched by {}", self.pod),
            Duration::from_secs(10),
            || async move {
                (self.metric("dp_watcher_changes_dispatched_total").await >= count as f64)
                    .then_some(())
            },
        )
        .await
    }
}

macro_rules! service_deref {
    ($($kind:ident),*) => {$(
        impl std::ops::Deref for $kind {
            type Target = Service;
            fn deref(&self) -> &Service {
                &self.0
            }
        }
        impl std::ops::DerefMut for $kind {
            fn deref_mut(&mut self) -> &mut Service {
                &mut self.0
            }
        }
    )*};
}
service_deref!(Frontend, Watcher);
