//! The controller's metrics: transitions, outcomes, step durations, the time from an alert
//! to a verified fix, and what the LLM cost, recorded once per status write.

use crate::api::remediation::{Phase, RemediationStatus};

/// The controller's metrics, served on `/metrics` with intake's.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// Remediations that ended, by phase and the reason the machine gave.
    pub finished:
        prometheus_client::metrics::family::Family<FinishedLabels, prometheus_client::metrics::counter::Counter>,
    /// Phase transitions, by the phase entered.
    pub transitions:
        prometheus_client::metrics::family::Family<PhaseLabels, prometheus_client::metrics::counter::Counter>,
    /// How long each step's effect took, by step and how it ended.
    pub step_seconds: prometheus_client::metrics::family::Family<
        StepLabels,
        prometheus_client::metrics::histogram::Histogram,
        fn() -> prometheus_client::metrics::histogram::Histogram,
    >,
    /// How long one reconcile took (reading, deciding, writing status; effects run apart).
    pub reconcile_seconds: prometheus_client::metrics::histogram::Histogram,
    /// From the alert's start to a verified fix.
    pub alert_to_fix_seconds: prometheus_client::metrics::histogram::Histogram,
    /// LLM tokens spent on proposals, by direction (prompt, completion).
    pub llm_tokens:
        prometheus_client::metrics::family::Family<DirectionLabels, prometheus_client::metrics::counter::Counter>,
    /// Dollars spent on LLM proposals (cost per verified fix: this over
    /// `reflex_remediations_finished_total{phase="Succeeded"}`).
    pub llm_cost_dollars: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
}

fn step_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new([
        0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
    ])
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            finished: Default::default(),
            transitions: Default::default(),
            step_seconds: prometheus_client::metrics::family::Family::new_with_constructor(step_histogram),
            reconcile_seconds: prometheus_client::metrics::histogram::Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            alert_to_fix_seconds: prometheus_client::metrics::histogram::Histogram::new([
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
            ]),
            llm_tokens: Default::default(),
            llm_cost_dollars: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct FinishedLabels {
    pub phase: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

impl ControllerMetrics {
    /// Registers `reflex_remediations_finished_total` and `reflex_remediation_transitions_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "remediations_finished",
            "Remediations that ended, by phase and reason",
            self.finished.clone(),
        );
        registry.register(
            "remediation_transitions",
            "Phase transitions, by the phase entered",
            self.transitions.clone(),
        );
        registry.register("step_duration_seconds", "How long each step's effect took", self.step_seconds.clone());
        registry.register("reconcile_duration_seconds", "How long one reconcile took", self.reconcile_seconds.clone());
        registry.register(
            "alert_to_verified_fix_seconds",
            "From the alert's start to a verified fix",
            self.alert_to_fix_seconds.clone(),
        );
        registry.register("llm_tokens", "LLM tokens spent on proposals", self.llm_tokens.clone());
        registry.register("llm_cost_dollars", "Dollars spent on LLM proposals", self.llm_cost_dollars.clone());
        for direction in ["prompt", "completion"] {
            self.llm_tokens.get_or_create(&DirectionLabels { direction }).inc_by(0);
        }
    }

    /// What a reconcile recorded for the first time: steps that finished (their durations),
    /// a verified fix (the time since the alert), an LLM proposal (its tokens and cost).
    pub(super) fn observe(
        &self,
        before: &RemediationStatus,
        next: &RemediationStatus,
        alert_start: jiff::Timestamp,
        now: jiff::Timestamp,
    ) {
        for s in &next.steps {
            let Some(finished) = s.finished_at.as_ref() else { continue };
            let seen =
                before.steps.iter().any(|b| b.step == s.step && b.attempt == s.attempt && b.finished_at.is_some());
            if !seen {
                let seconds = finished.0.duration_since(s.started_at.0).as_secs_f64().max(0.0);
                self.step_seconds
                    .get_or_create(&StepLabels { step: format!("{:?}", s.step), outcome: format!("{:?}", s.state) })
                    .observe(seconds);
            }
        }
        if next.phase == Phase::Succeeded && before.phase != Phase::Succeeded {
            self.alert_to_fix_seconds.observe(now.duration_since(alert_start).as_secs_f64().max(0.0));
        }
        if let Some(p) =
            next.proposal.as_ref().filter(|p| before.proposal.as_ref().is_none_or(|b| b.digest != p.digest))
        {
            if let Some(t) = &p.tokens {
                self.llm_tokens.get_or_create(&DirectionLabels { direction: "prompt" }).inc_by(t.prompt);
                self.llm_tokens.get_or_create(&DirectionLabels { direction: "completion" }).inc_by(t.completion);
            }
            if let Some(cost) =
                p.cost_usd.as_deref().and_then(|c| c.parse::<f64>().ok()).filter(|c| c.is_finite() && *c > 0.0)
            {
                self.llm_cost_dollars.inc_by(cost);
            }
        }
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    #[test]
    pub(super) fn a_reconcile_counts_what_it_recorded_first_and_only_once() {
        let m = ControllerMetrics::default();
        let mut registry = prometheus_client::registry::Registry::with_prefix("reflex");
        m.register(&mut registry);
        let before = RemediationStatus::default();
        let t = |s: i64| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(s).unwrap());
        let mut next = RemediationStatus { phase: Phase::Succeeded, ..Default::default() };
        next.steps.push(crate::api::remediation::StepRecord {
            step: crate::api::remediation::Step::Diagnose,
            attempt: 1,
            state: crate::api::remediation::StepState::Succeeded,
            category: None,
            message: None,
            started_at: t(100),
            finished_at: Some(t(102)),
        });
        let alert = jiff::Timestamp::from_second(40).unwrap();
        let now = jiff::Timestamp::from_second(160).unwrap();
        m.observe(&before, &next, alert, now);
        m.observe(&next, &next, alert, now);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("reflex_step_duration_seconds_count{step=\"Diagnose\",outcome=\"Succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("reflex_step_duration_seconds_sum{step=\"Diagnose\",outcome=\"Succeeded\"} 2.0"),
            "{text}"
        );
        assert!(text.contains("reflex_alert_to_verified_fix_seconds_sum 120.0"), "{text}");
        assert!(text.contains("reflex_alert_to_verified_fix_seconds_count 1"), "{text}");
    }
}
