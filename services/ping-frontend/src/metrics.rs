//! The frontend's Prometheus metrics (prefix `dp_frontend_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
    /// The Ping status answered ("" for none: client gone).
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// A wake's stages, in order (ARCHITECTURE.md, "The wake's stage budget"): acceptance to
/// stored in JetStream, to taken by a dispatcher, to its batch closed, to the bump done, to the
/// wake sent (the watcher's clock), to received here (across clocks), to Status 2 written.
const STAGES: [&str; 7] = [
    "durable", "queued", "coalesce", "bump", "publish", "deliver", "answer",
];

/// 25 µs to about 0.6 s in steps of half: the stages are sub-millisecond when all is well,
/// and doubling buckets could not tell 0.5 ms from 0.8.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000025, 1.5, 26))
}

/// The `limit` label's values: what `Shared::count_limited` is called with.
const LIMITS: [&str; 10] = [
    "connections",
    "connections_per_source",
    "proxy_protocol",
    "head_size",
    "header_time",
    "body_size",
    "pings_per_device",
    "pings_per_mailbox",
    "devices_per_mailbox",
    "auth_failures",
];

pub struct Metrics {
    pub limited: Family<LimitLabels, Counter>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub tls_errors: Counter,
    pub tls_handshakes: Family<KindLabels, Counter>,
    pub parked: Gauge,
    pub connections: Gauge,
    pub connections_opened: Counter,
    pub pings: Family<OutcomeLabels, Counter>,
    pub wake_latency: Histogram,
    /// One histogram per entry of `STAGES`, held rather than looked up in a family per wake.
    wake_stages: [Histogram; STAGES.len()],
    wake_stage_family: Family<StageLabels, Histogram, fn() -> Histogram>,
    pub http_responses: Family<CodeLabels, Counter>,
    pub auth: Family<ResultLabels, Counter>,
    pub redis_errors: Counter,
    pub answers_undelivered: Counter,
    pub redis_state_losses: Counter,
    pub nats_reconnects: Counter,
    pub evictions_sent: Counter,
    pub wake_links: Gauge,
    pub link_wakes: Counter,
    pub history: dp_db::history::HistoryMetrics,
    pub proxy: ProxyMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxiedLabels {
    pub command: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObservedLabels {
    pub what: &'static str,
}

/// Proxy mode's metrics.
#[derive(Default)]
pub struct ProxyMetrics {
    pub proxied: Family<ProxiedLabels, Counter>,
    pub upstream_failures: Counter,
    pub observed: Family<ObservedLabels, Counter>,
    pub repeat_backoffs: Counter,
    pub probes: Family<ResultLabels, Counter>,
}

impl ProxyMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "proxied",
            "Requests forwarded to the upstream ActiveSync server, by command and the upstream's HTTP code",
            self.proxied.clone(),
        );
        r.register(
            "upstream_failures",
            "Requests the upstream did not answer (unreachable, refused, timed out): answered 503",
            self.upstream_failures.clone(),
        );
        r.register(
            "observed",
            "FolderSync hierarchies and completed Syncs recorded from proxied traffic",
            self.observed.clone(),
        );
        r.register(
            "probes",
            "Upstream probes of parked Pings (GetItemEstimate) by result",
            self.probes.clone(),
        );
        r.register(
            "repeat_backoffs",
            "Status 2 answers held back because the device kept Pinging without syncing",
            self.repeat_backoffs.clone(),
        );
    }
}

impl Metrics {
    pub fn count_handshake(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.tls_handshakes
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn proxied(&self, command: &'static str, code: u16) {
        self.proxy
            .proxied
            .get_or_create(&ProxiedLabels { command, code })
            .inc();
    }

    pub fn observed(&self, what: &'static str) {
        self.proxy
            .observed
            .get_or_create(&ObservedLabels { what })
            .inc();
    }
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::unregistered();
        let r = registry.sub_registry_with_prefix("dp_frontend");
        metrics.proxy.register(r);
        metrics.register_connections(r);
        metrics.register_pings(r);
        metrics.register_health(r);
        metrics
    }

    /// Every metric at zero, each label a dashboard expects already present.
    fn unregistered() -> Metrics {
        let stage_family: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(stage_histogram);
        let metrics = Metrics {
            limited: Family::default(),
            tls_reloads: Family::default(),
            tls_handshake_failures: Counter::default(),
            tls_errors: Counter::default(),
            tls_handshakes: Family::default(),
            parked: Gauge::default(),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            pings: Family::default(),
            // 0.5 ms to about 16 s.
            wake_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            wake_stages: std::array::from_fn(|i| {
                // Clones share their counts: the family exposes what these observe.
                stage_family
                    .get_or_create(&StageLabels { stage: STAGES[i] })
                    .clone()
            }),
            wake_stage_family: stage_family,
            http_responses: Family::default(),
            auth: Family::default(),
            redis_errors: Counter::default(),
            answers_undelivered: Counter::default(),
            redis_state_losses: Counter::default(),
            nats_reconnects: Counter::default(),
            evictions_sent: Counter::default(),
            wake_links: Gauge::default(),
            link_wakes: Counter::default(),
            history: Default::default(),
            proxy: ProxyMetrics::default(),
        };
        // Every limit and reload result exists at 0 from the start: dashboards show 0, not "no
        // data", and rate() sees the first refusal.
        for limit in LIMITS {
            let _ = metrics.limited.get_or_create(&LimitLabels { limit });
        }
        for result in ["ok", "error"] {
            let _ = metrics.tls_reloads.get_or_create(&ResultLabels { result });
        }
        for kind in ["full", "resumed"] {
            let _ = metrics.tls_handshakes.get_or_create(&KindLabels { kind });
        }
        metrics
    }

    fn register_connections(&self, r: &mut Registry) {
        r.register(
            "tls_reloads",
            "TLS certificate reloads by result",
            self.tls_reloads.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes completed, by kind (full, or resumed with a ticket)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "tls_errors",
            "TLS connections ended after the handshake by what the device sent: an alert, a \
             record that fails authentication, a handshake message other than KeyUpdate",
            self.tls_errors.clone(),
        );
        r.register(
            "limited",
            "Requests refused by a limit (connections, connections_per_source, pings_per_device, pings_per_mailbox, devices_per_mailbox, proxy_protocol: a connection without a valid PROXY header)",
            self.limited.clone(),
        );
        r.register(
            "parked_pings",
            "Pings parked on this pod now (claimed, waiting for news or their heartbeat)",
            self.parked.clone(),
        );
        r.register(
            "connections",
            "Open device connections",
            self.connections.clone(),
        );
        r.register(
            "connections_opened",
            "Device connections accepted (its rate is the connect rate, and the storm rate after a pod is lost)",
            self.connections_opened.clone(),
        );
    }

    fn register_pings(&self, r: &mut Registry) {
        r.register(
            "pings",
            "Finished Pings by outcome and status",
            self.pings.clone(),
        );
        r.register(
            "wake_latency_seconds",
            "From a change's acceptance to its Status 2 written",
            self.wake_latency.clone(),
        );
        r.register(
            "wake_stage_seconds",
            "A wake's time in each stage: durable, queued, coalesce, bump, publish (the watcher's), deliver (to this pod), answer (Status 2 written)",
            self.wake_stage_family.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses by code",
            self.http_responses.clone(),
        );
        r.register("auth", "Authentications by result", self.auth.clone());
    }

    /// The pod's dependencies and its history writer.
    fn register_health(&self, r: &mut Registry) {
        r.register(
            "redis_errors",
            "Redis calls that failed or timed out",
            self.redis_errors.clone(),
        );
        r.register(
            "answers_undelivered",
            "Status 2 answers whose connection failed before the device read them (reported again)",
            self.answers_undelivered.clone(),
        );
        r.register(
            "redis_state_losses",
            "Times this pod saw Redis come back without its state (a new epoch)",
            self.redis_state_losses.clone(),
        );
        r.register(
            "nats_reconnects",
            "NATS reconnections",
            self.nats_reconnects.clone(),
        );
        r.register(
            "evictions_sent",
            "Superseded Pings evicted on other pods",
            self.evictions_sent.clone(),
        );
        r.register(
            "wake_links",
            "Direct wake links from watchers open now (WAKE_LISTEN_ADDR)",
            self.wake_links.clone(),
        );
        r.register(
            "link_wakes",
            "Wakes received over direct links rather than NATS",
            self.link_wakes.clone(),
        );
        r.register(
            "history_rows_written",
            "Heartbeat history rows written",
            self.history.written.clone(),
        );
        r.register(
            "history_rows_dropped",
            "Heartbeat history rows dropped (queue full or database unavailable)",
            self.history.dropped.clone(),
        );
    }
}

impl Metrics {
    /// The watcher's stages of a wake just received, and its way here.
    pub fn observe_wake_stages(
        &self,
        clock: &crate::parked::WakeClock,
        s: &dp_proto::events::WakeStages,
    ) {
        let spans = [
            (clock.accepted_us, s.stored_us),
            (s.stored_us, s.taken_us),
            (s.taken_us, s.closed_us),
            (s.closed_us, s.bumped_us),
            (s.bumped_us, s.sent_us),
            (s.sent_us, clock.received_us),
        ];
        for (histogram, (from, to)) in self.wake_stages.iter().zip(spans) {
            observe_span(histogram, from, to);
        }
    }

    /// A Status 2 written: the whole wake, and its last stage.
    pub fn observe_answer(&self, clock: &crate::parked::WakeClock, written_us: u64) {
        observe_span(&self.wake_latency, clock.accepted_us, written_us);
        let answer = &self.wake_stages[STAGES.len() - 1];
        observe_span(answer, clock.received_us, written_us);
    }
}

fn observe_span(histogram: &Histogram, from_us: u64, to_us: u64) {
    histogram.observe(to_us.saturating_sub(from_us) as f64 / 1e6);
}
