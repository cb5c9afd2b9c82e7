//! Intake's metrics: deliveries, alerts, rejections, queue depth and what was created.

use super::*;

/// Intake's metrics.
pub struct Metrics {
    pub(super) registry: Registry,
    /// Metrics other parts of the operator register to be served on the same `/metrics`.
    pub(super) others: std::sync::Mutex<Registry>,
    pub(super) received: Counter,
    pub(super) matched: Counter,
    pub(super) deduplicated: Counter,
    pub(super) resolved: Counter,
    pub(super) created: Counter,
    pub(super) suppressed: Family<Reason, Counter>,
    pub(super) unresolved: Family<Reason, Counter>,
    pub(super) rejected: Family<Reason, Counter>,
    pub(super) truncated: Counter,
    pub(super) queued: Gauge,
    pub(super) writes_failed: Counter,
    pub(super) events_dropped: Counter,
    pub(super) latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reflex_intake");
        let m = Self {
            registry: Registry::default(),
            others: std::sync::Mutex::new(Registry::with_prefix("reflex")),
            received: Counter::default(),
            matched: Counter::default(),
            deduplicated: Counter::default(),
            resolved: Counter::default(),
            created: Counter::default(),
            suppressed: Family::default(),
            unresolved: Family::default(),
            rejected: Family::default(),
            truncated: Counter::default(),
            queued: Gauge::default(),
            writes_failed: Counter::default(),
            events_dropped: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        registry.register("alerts_received", "Alerts received in webhook deliveries", m.received.clone());
        registry.register("alerts_matched", "Alert and policy matches", m.matched.clone());
        registry.register(
            "alerts_deduplicated",
            "Matches that found their Remediation already active",
            m.deduplicated.clone(),
        );
        registry.register("alerts_resolved", "Resolutions recorded on an active Remediation", m.resolved.clone());
        registry.register("remediations_created", "Remediations created", m.created.clone());
        registry.register(
            "alerts_suppressed",
            "Matches that did not become a Remediation, by reason",
            m.suppressed.clone(),
        );
        registry.register(
            "targets_unresolved",
            "Matches whose target could not be resolved from the alert's labels, by reason",
            m.unresolved.clone(),
        );
        registry.register("requests_rejected", "Deliveries rejected, by reason", m.rejected.clone());
        registry.register(
            "alerts_truncated",
            "Alerts Alertmanager left out of deliveries (truncatedAlerts)",
            m.truncated.clone(),
        );
        registry.register("queue_depth", "Remediations with writes waiting", m.queued.clone());
        registry.register(
            "writes_failed",
            "Remediation writes given up after retries (Alertmanager's next delivery tries again)",
            m.writes_failed.clone(),
        );
        registry.register(
            "events_dropped",
            "Intake Events not recorded because the backlog was full",
            m.events_dropped.clone(),
        );
        registry.register("request_duration_seconds", "Time to handle a delivery", m.latency.clone());
        Self { registry, ..m }
    }
}

impl Metrics {
    pub(super) fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// The text exposition: intake's metrics, then the others'.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let others = self.others.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err()
            || prometheus_client::encoding::text::encode_registry(&mut out, &others).is_err()
            || prometheus_client::encoding::text::encode_eof(&mut out).is_err()
        {
            out.clear();
        }
        out
    }

    /// Registers more metrics to be served with intake's (`f` is handed the registry).
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.others.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}
