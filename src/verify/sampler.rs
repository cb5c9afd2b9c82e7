//! The verify stage's shell: take one sample of the verification query and judge it.
//!
//! Contract: the rule is the policy's `verify`, else the playbook's, else the alert's own
//! ([`ValidVerify::from_alert`]). A rule without a query is derived from the alert
//! ([`super::derive`]): its alerting rule from Prometheus's rules API, scoped to its series,
//! which must return nothing — checked first to reproduce the alert at the time it started.
//! Until `initialDelay` after the rollout nothing is sampled; then each call reads the query once —
//! a value, no data, the provider failing or rejecting the query are all readings, never a
//! step failure — and [`super::judge::judge`] decides with what the alert did since the
//! change (`status.alert` against `status.deploy.appliedAt`).

use std::sync::Arc;

use futures::FutureExt;

use std::collections::BTreeMap;

use super::derive::{identifying, pick_rule, scope, workload_pods};
use super::guard::judge_guard;
use super::judge::{AlertSince, Reading, judge, waiting};
use crate::api::ErrorCategory;
use crate::api::remediation::GuardStatus;
use crate::api::remediation::Verification;
use crate::api::validate::ValidVerify;
use crate::cluster::load_playbook;
use crate::metrics::{MetricsError, MetricsSource};
use crate::ports::{StageError, StageFuture, StageInput, Verify};

#[derive(Clone)]
pub struct Sampler {
    pub client: kube::Client,
    pub metrics: Arc<dyn MetricsSource>,
}

impl Verify for Sampler {
    fn verify(&self, input: StageInput) -> StageFuture<Verification> {
        let this = self.clone();
        async move {
            let policy = input
                .policy
                .clone()
                .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "the policy is missing"))?;
            let given = match &policy.verify {
                Some(v) => Some(v.clone()),
                None => {
                    let ns = input.remediation.metadata.namespace.clone().unwrap_or_default();
                    match policy.playbook.as_deref() {
                        Some(name) => load_playbook(&this.client, &ns, name).await?.verify,
                        None => None,
                    }
                }
            };
            // Neither says how: the alert's own rule is the check, with default windows.
            let defaults = given.is_none();
            let rule = given.unwrap_or_else(ValidVerify::from_alert);
            let status = input.remediation.status.as_ref();
            let prev = status.and_then(|s| s.verification.as_ref());
            let applied = status.and_then(|s| s.deploy.as_ref()?.applied_at.as_ref()).map(|t| t.0);
            let now = jiff::Timestamp::now();
            // The stabilization window runs from the rollout's end (the apply, without one).
            let rolled_out = status.and_then(|s| s.rollout.as_ref()?.completed_at.as_ref()).map(|t| t.0);
            let due = rolled_out.or(applied).unwrap_or(now).checked_add(rule.initial_delay).unwrap_or(now);
            if let Some(waiting) = waiting(&rule, prev, due, now) {
                return Ok(waiting);
            }
            let (rule, reading, reproduced) = match rule.query.clone() {
                Some(query) => (rule, read(this.metrics.as_ref(), &query).await, false),
                None => {
                    let reproduced = prev.is_some_and(|p| p.reproduced);
                    let spec = &input.remediation.spec;
                    derived(this.metrics.as_ref(), rule, &spec.alert, &spec.target.name, reproduced, defaults).await
                }
            };
            let alert = AlertSince::of(status.and_then(|s| s.alert.as_ref()), applied);
            let before = applied.unwrap_or(now).checked_sub(jiff::SignedDuration::from_secs(1)).unwrap_or(now);
            let guards = guards(this.metrics.as_ref(), &rule, prev, before).await;
            let mut verification = judge(&rule, prev, reading, alert, guards, now);
            verification.reproduced = reproduced;
            Ok(verification)
        }
        .boxed()
    }
}

/// The guards as they stand: each one's baseline — its value just `before` the change, read
/// from the metrics source's history once (again while the source fails) — and its value now,
/// judged ([`super::guard`]). A provider error leaves a guard as it was.
async fn guards(
    metrics: &dyn MetricsSource,
    rule: &ValidVerify,
    prev: Option<&Verification>,
    before: jiff::Timestamp,
) -> Vec<GuardStatus> {
    let mut out = Vec::with_capacity(rule.guards.len());
    for spec in &rule.guards {
        let mut status =
            prev.and_then(|p| p.guards.iter().find(|g| g.name == spec.name).cloned()).unwrap_or(GuardStatus {
                name: spec.name.clone(),
                baseline: None,
                baseline_read: false,
                last: None,
                worse: false,
            });
        if !status.baseline_read
            && let Ok(baseline) = metrics.instant_at(&spec.query, before).await
        {
            status.baseline = baseline;
            status.baseline_read = true;
        }
        let now = metrics.instant(&spec.query).await.ok().flatten();
        out.push(judge_guard(spec, status, now));
    }
    out
}

/// One reading of `query`: a provider that fails is a sample that measured nothing, never a
/// bad one.
async fn read(metrics: &dyn MetricsSource, query: &str) -> Reading {
    match metrics.instant(query).await {
        Ok(v) => Reading::Value(v),
        Err(MetricsError::Rejected(m)) => Reading::Rejected(m),
        Err(MetricsError::Unavailable(m)) => Reading::Unavailable(m),
    }
}

/// The check derived from the alert ([`super::derive`]): its rule's expression scoped to its
/// series (a Pod it named widened to the workload's Pods, `target`), which must return
/// nothing. Until it has once reproduced the alert at the time it started (`reproduced`), an
/// empty answer proves nothing: that check comes first, and a scoped expression that does
/// not reproduce the alert cannot see its series. An empty answer also counts as "clear"
/// only while some series it reads still exists (the presence query); otherwise, no data.
/// Returns the rule with the query, the reading, and whether it has reproduced the alert.
async fn derived(
    metrics: &dyn MetricsSource,
    mut rule: ValidVerify,
    alert: &crate::api::remediation::AlertRef,
    target: &str,
    reproduced: bool,
    defaults: bool,
) -> (ValidVerify, Reading, bool) {
    rule.pass_when_empty = true;
    let labels: BTreeMap<String, String> = alert.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let rules = match metrics.alert_rules(&alert.name).await {
        Ok(r) => r,
        Err(MetricsError::Unavailable(m) | MetricsError::Rejected(m)) => {
            return (rule, Reading::Unavailable(format!("reading the alerting rules: {m}")), reproduced);
        }
    };
    let pods = workload_pods(&labels, target);
    let scoped = pick_rule(&rules, &alert.name, &labels)
        .and_then(|r| scope(&r.expr, &identifying(&labels, r), pods.as_ref()).map(|q| (r.expr.clone(), q)));
    let (original, scoped) = match scoped {
        Ok(q) => q,
        Err(why) => return (rule, Reading::Underivable(why), reproduced),
    };
    rule.query = Some(scoped.query.clone());
    if defaults {
        // Nobody chose the windows: after a fix the rule can stay true on history alone for
        // as long as it looks back, so the timeout leaves room for that.
        rule.timeout = rule.timeout.max(scoped.lookback + rule.for_ + rule.for_);
    }
    if !reproduced {
        // At the recorded start, and a second later: a Kubernetes timestamp keeps whole
        // seconds, so the recorded start can come before the evaluation that fired the alert.
        let started = alert.starts_at.0;
        let second = started.checked_add(jiff::SignedDuration::from_secs(1)).unwrap_or(started);
        let mut seen = false;
        for at in [started, second] {
            match metrics.instant_at(&scoped.query, at).await {
                Ok(Some(_)) => {
                    seen = true;
                    break;
                }
                Ok(None) => {}
                Err(MetricsError::Unavailable(m) | MetricsError::Rejected(m)) => {
                    return (
                        rule,
                        Reading::Unavailable(format!("checking the derived query at the alert's start: {m}")),
                        false,
                    );
                }
            }
        }
        if !seen {
            let why = format!(
                "scoped to the alert's labels, its rule ({original}) returns nothing at {started} when the alert started (nor a second later): it cannot see the alert's series, so an empty answer would prove nothing; give verify.query"
            );
            return (rule, Reading::Underivable(why), false);
        }
    }
    let reading = match read(metrics, &scoped.query).await {
        Reading::Value(None) if !scoped.presence.is_empty() => match metrics.instant(&scoped.presence).await {
            Ok(Some(_)) => Reading::Value(None),
            Ok(None) => Reading::SeriesGone(scoped.presence),
            Err(MetricsError::Unavailable(m) | MetricsError::Rejected(m)) => Reading::Unavailable(m),
        },
        other => other,
    };
    (rule, reading, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::RemediationPolicySpec;
    use crate::api::remediation::{Remediation, Step, VerificationVerdict};
    use crate::api::validate::ValidPolicy;
    use crate::ports::EffectKey;
    use futures::future::BoxFuture;
    use serde_json::json;

    struct Healthy;
    impl MetricsSource for Healthy {
        fn instant(&self, _: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
            async { Ok(Some(0.0)) }.boxed()
        }
    }

    fn input(alert: serde_json::Value) -> StageInput {
        let rem: Remediation = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "r", "namespace": "shop", "uid": "u"},
            "spec": {"policyRef": {"name": "p"}, "alert": {"name": "A", "fingerprint": "f", "labels": {}, "annotations": {},
                "startsAt": "2026-01-01T00:00:00Z"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "t"}},
            "status": {"phase": "Verifying", "alert": alert,
                "deploy": {"previous": {}, "previousResourceVersion": "1", "appliedAt": "2026-01-01T00:10:00Z"}}}))
        .unwrap();
        let spec: RemediationPolicySpec = serde_json::from_value(json!({"match": {"alertnames": ["A"]},
            "target": {"kind": "Deployment", "name": "t"}, "playbook": "p", "trust": {"level": "auto"},
            "verify": {"query": "errors", "operator": "<", "threshold": 1, "for": "60s", "timeout": "600s", "interval": "5s"}}))
        .unwrap();
        StageInput {
            remediation: Arc::new(rem),
            policy: Some(Arc::new(ValidPolicy::from_spec(&spec).unwrap())),
            key: EffectKey { uid: "u".into(), step: Step::Verify, attempt: 1 },
            cancel: Default::default(),
        }
    }

    #[tokio::test]
    async fn an_alert_that_fires_again_after_the_change_resolved_it_fails_verification() {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let sampler = Sampler { client, metrics: Arc::new(Healthy) };
        let refired = json!({"state": "firing", "timesSeen": 5, "firstSeen": "2026-01-01T00:00:00Z",
            "lastSeen": "2026-01-01T00:12:00Z", "resolvedAt": "2026-01-01T00:11:00Z", "refiredAt": "2026-01-01T00:11:30Z"});
        let v = sampler.verify(input(refired)).await.unwrap();
        assert_eq!(v.verdict, VerificationVerdict::Failed, "{:?}", v.message);
        // The same history before the change is no evidence against it.
        let before = json!({"state": "firing", "timesSeen": 5, "firstSeen": "2026-01-01T00:00:00Z",
            "lastSeen": "2026-01-01T00:09:00Z", "resolvedAt": "2026-01-01T00:08:00Z", "refiredAt": "2026-01-01T00:08:30Z"});
        let v = sampler.verify(input(before)).await.unwrap();
        assert_eq!(v.verdict, VerificationVerdict::Pending, "{:?}", v.message);
    }

    /// Prometheus fired the alert at 00:00:00.700; its series appeared at 00:00:00.400; the
    /// Remediation keeps the start as 00:00:00 (whole seconds).
    struct FiredMidSecond;
    impl MetricsSource for FiredMidSecond {
        fn instant(&self, _: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
            async { Ok(None) }.boxed()
        }
        fn instant_at(&self, _: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
            let appeared: jiff::Timestamp = "2026-01-01T00:00:00.400Z".parse().unwrap();
            async move { Ok((at >= appeared).then_some(1.0)) }.boxed()
        }
        fn alert_rules(&self, _: &str) -> BoxFuture<'_, Result<Vec<crate::metrics::AlertRule>, MetricsError>> {
            let rule =
                crate::metrics::AlertRule { name: "A".into(), expr: "up == 0".into(), labels: Default::default() };
            async move { Ok(vec![rule]) }.boxed()
        }
    }

    #[tokio::test]
    async fn an_alert_whose_start_was_cut_to_the_second_is_still_reproduced() {
        let alert: crate::api::remediation::AlertRef = serde_json::from_value(json!({"name": "A", "fingerprint": "f",
            "labels": {"alertname": "A", "job": "api"}, "startsAt": "2026-01-01T00:00:00Z"}))
        .unwrap();
        let (_, _, reproduced) = derived(&FiredMidSecond, ValidVerify::from_alert(), &alert, "t", false, true).await;
        assert!(reproduced, "checked a second after the recorded start too");
    }
}
