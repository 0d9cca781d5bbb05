//! The watcher's Prometheus metrics (prefix `dp_watcher_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchedLabels {
    pub watched: &'static str,
}

/// The `imap` role's.
#[derive(Default)]
pub struct ImapMetrics {
    pub watched: Gauge,
    pub over_capacity: Gauge,
    pub reconnects: Counter,
    pub sessions: Counter,
    pub changes: Counter,
}

impl ImapMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "imap_watched",
            "Mailboxes this replica watches over IMAP",
            self.watched.clone(),
        );
        r.register(
            "imap_over_capacity",
            "Mailboxes this replica should watch but IMAP_MAX_CONNECTIONS leaves unwatched",
            self.over_capacity.clone(),
        );
        r.register(
            "imap_reconnects",
            "IMAP watch sessions that failed and were started again",
            self.reconnects.clone(),
        );
        r.register(
            "imap_sessions",
            "IMAP watch sessions established and caught up",
            self.sessions.clone(),
        );
        r.register(
            "imap_changes",
            "Changes the IMAP role found and made durable",
            self.changes.clone(),
        );
    }
}

/// Direct wake links to frontends (DIRECT_WAKES).
#[derive(Clone, Default)]
pub struct LinkMetrics {
    pub open: Gauge,
    pub wakes: Counter,
    pub fell_back: Counter,
}

impl LinkMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "wake_links",
            "Direct wake links to frontends open now",
            self.open.clone(),
        );
        r.register(
            "link_wakes",
            "Wake messages sent over direct links (counted in wakes_sent too)",
            self.wakes.clone(),
        );
        r.register(
            "link_fallbacks",
            "Wake messages a link took but did not see acknowledged (the link failed or was slow), sent over NATS after all",
            self.fell_back.clone(),
        );
    }
}

pub struct Metrics {
    pub imap: ImapMetrics,
    pub store_folders: Family<WatchedLabels, Counter>,
    pub ingest_requests: Family<CodeLabels, Counter>,
    pub changes_accepted: Counter,
    pub changes_dispatched: Counter,
    pub changes_woken_at_ingest: Counter,
    pub changes_invalid: Counter,
    pub changes_dead: Counter,
    pub wakes_sent: Counter,
    pub links: LinkMetrics,
    pub dispatch_errors: Counter,
    pub dispatch_lag: Histogram,
    pub pending: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            imap: ImapMetrics::default(),
            store_folders: Family::default(),
            ingest_requests: Family::default(),
            changes_accepted: Counter::default(),
            changes_dispatched: Counter::default(),
            changes_woken_at_ingest: Counter::default(),
            changes_invalid: Counter::default(),
            changes_dead: Counter::default(),
            wakes_sent: Counter::default(),
            links: LinkMetrics::default(),
            dispatch_errors: Counter::default(),
            dispatch_lag: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            pending: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("dp_watcher");
        metrics.imap.register(r);
        metrics.links.register(r);
        r.register(
            "ingest_requests",
            "Ingest API requests by HTTP code",
            metrics.ingest_requests.clone(),
        );
        r.register(
            "changes_accepted",
            "Changes made durable by the ingest API",
            metrics.changes_accepted.clone(),
        );
        r.register(
            "changes_dispatched",
            "Changes bumped and woken (by a dispatcher, or at the ingest), then acknowledged",
            metrics.changes_dispatched.clone(),
        );
        r.register(
            "changes_woken_at_ingest",
            "Changes bumped and woken where they came in, before JetStream held them (WAKE_AT_INGEST)",
            metrics.changes_woken_at_ingest.clone(),
        );
        r.register(
            "changes_invalid",
            "Stream messages that were not valid changes (dropped)",
            metrics.changes_invalid.clone(),
        );
        r.register(
            "store_folders",
            "Store folders changed, by whether a parked Ping watched them (no wake when none did)",
            metrics.store_folders.clone(),
        );
        r.register(
            "changes_dead",
            "Changes moved to the dead-letter stream after CHANGES_MAX_DELIVER failed deliveries",
            metrics.changes_dead.clone(),
        );
        r.register(
            "wakes_sent",
            "Wake messages sent to pods (over NATS or a direct link)",
            metrics.wakes_sent.clone(),
        );
        r.register(
            "dispatch_errors",
            "Dispatch batches that failed and will be redelivered",
            metrics.dispatch_errors.clone(),
        );
        r.register(
            "dispatch_lag_seconds",
            "From a change's acceptance to its dispatch",
            metrics.dispatch_lag.clone(),
        );
        r.register(
            "jetstream_pending",
            "Changes in the stream not yet delivered to a watcher",
            metrics.pending.clone(),
        );
        metrics
    }
}

impl Metrics {
    pub fn count_store_folders(&self, watched: usize, unwatched: usize) {
        for (label, count) in [("yes", watched), ("no", unwatched)] {
            if count > 0 {
                self.store_folders
                    .get_or_create(&WatchedLabels { watched: label })
                    .inc_by(count as u64);
            }
        }
    }
}
