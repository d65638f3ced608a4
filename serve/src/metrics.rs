//! Prometheus metrics of the server (`GET /metrics`, text exposition format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub in_flight: Gauge,
    pub queued: Gauge,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub disconnects: Counter,
    pub cancelled: Counter,
    pub time_to_first_token: Histogram,
    pub kept_fraction: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("namm_serve");
        let m = Self {
            requests: Family::default(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            disconnects: Counter::default(),
            cancelled: Counter::default(),
            time_to_first_token: Histogram::new(
                [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0].into_iter(),
            ),
            kept_fraction: Histogram::new(
                [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0].into_iter(),
            ),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by endpoint and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being generated (rows of the batch)",
            m.in_flight.clone(),
        );
        registry.register(
            "requests_queued",
            "Requests waiting for a row",
            m.queued.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens prefilled",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            m.completion_tokens.clone(),
        );
        registry.register(
            "disconnects",
            "Requests whose client went away before the answer ended",
            m.disconnects.clone(),
        );
        registry.register(
            "cancelled",
            "Requests cancelled by a shutdown",
            m.cancelled.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "kept_fraction",
            "Fraction of a finished request's tokens its KV cache still held",
            m.kept_fraction.clone(),
        );
        Self { registry, ..m }
    }

    pub fn count(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
