//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResult {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    /// Events posted, by result: accepted, duplicate, rejected, unavailable (requests the
    /// store could not take).
    pub events: Family<ResultLabel, Counter>,
    /// Delivery attempts by kind (webhook, ftp) and result (delivered, retry, failed, gone).
    pub deliveries: Family<KindResult, Counter>,
    /// Duration of one delivery attempt.
    pub attempt_seconds: Family<KindLabel, Histogram>,
    /// Time from acceptance to successful delivery.
    pub delivery_latency_seconds: Family<KindLabel, Histogram>,
    /// Deliveries waiting (new or retrying).
    pub queue_depth: Gauge,
    /// Reconciles by kind and result (ok, error).
    pub reconciles: Family<KindResult, Counter>,
    /// 0 healthy, 1 degraded (writes fail, e.g. disk full), 2 failed (cannot reopen the file).
    pub store_state: Gauge,
    /// Feed reads (`GET /v1/events`) by result: ok, unauthorized, forbidden, invalid, busy,
    /// unavailable.
    pub feed_requests: Family<ResultLabel, Counter>,
    /// Events returned by feed reads.
    pub feed_events: Counter,
    /// Feed long-polls waiting now.
    pub feed_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vehicle_connect");
        let events = Family::<ResultLabel, Counter>::default();
        let deliveries = Family::<KindResult, Counter>::default();
        let attempt_seconds =
            Family::<KindLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let delivery_latency_seconds =
            Family::<KindLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let queue_depth = Gauge::default();
        let reconciles = Family::<KindResult, Counter>::default();
        let store_state = Gauge::default();
        let feed_requests = Family::<ResultLabel, Counter>::default();
        let feed_events = Counter::default();
        let feed_waiting = Gauge::default();
        registry.register(
            "events",
            "Events posted to the ingest API, by result",
            events.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts, by kind and result",
            deliveries.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Duration of one delivery attempt",
            attempt_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from acceptance to successful delivery",
            delivery_latency_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Deliveries waiting (new or retrying)",
            queue_depth.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "store_state",
            "Store state: 0 healthy, 1 degraded (writes fail, e.g. disk full), 2 failed (cannot reopen its file)",
            store_state.clone(),
        );
        registry.register(
            "feed_requests",
            "Feed reads (GET /v1/events), by result",
            feed_requests.clone(),
        );
        registry.register(
            "feed_events",
            "Events returned by feed reads",
            feed_events.clone(),
        );
        registry.register(
            "feed_waiting",
            "Feed long-polls waiting for an event now",
            feed_waiting.clone(),
        );
        Metrics {
            registry,
            events,
            deliveries,
            attempt_seconds,
            delivery_latency_seconds,
            queue_depth,
            reconciles,
            store_state,
            feed_requests,
            feed_events,
            feed_waiting,
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
