//! The pure core of verification: fold one sample into the verification so far and decide.
//!
//! Contract: a fix *holds* when every sample in a contiguous run of good samples spanning at
//! least `for` is good; it *fails* when `timeout` has passed since the first sample without
//! that. A sample with no data is not good (an absent series proves nothing). Samples are
//! capped at [`MAX_SAMPLES`], oldest dropped. The alert is the other input ([`AlertSince`]):
//! an alert that resolved after the change and then fired again fails the fix at once,
//! whatever the query says; a resolution never shortens the window (Alertmanager's
//! resolution lags and can be premature), it is reported with the verdict.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::policy::Comparison;
use crate::api::remediation::{AlertObservation, AlertState, MAX_SAMPLES, Sample, Verification, VerificationVerdict};
use crate::api::validate::ValidVerify;

fn symbol(c: Comparison) -> &'static str {
    match c {
        Comparison::Less => "<",
        Comparison::LessOrEqual => "<=",
        Comparison::Greater => ">",
        Comparison::GreaterOrEqual => ">=",
        Comparison::Equal => "==",
        Comparison::NotEqual => "!=",
    }
}

fn describe(rule: &ValidVerify, value: Option<f64>) -> String {
    match value {
        Some(v) => format!("{} = {v} (want {} {})", rule.query, symbol(rule.operator), rule.threshold),
        None => format!("{} returned no data", rule.query),
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// What Alertmanager has said about the alert since the change was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertSince {
    /// Nothing new: still firing as before, or no word.
    Unchanged,
    /// It resolved after the change.
    Resolved { at: Timestamp },
    /// An alert started again, after having resolved, after the change.
    FiredAgain { at: Timestamp },
}

impl AlertSince {
    /// Read `status.alert` against the time the change was applied.
    pub fn of(alert: Option<&AlertObservation>, applied: Option<Timestamp>) -> Self {
        let (Some(a), Some(applied)) = (alert, applied) else { return Self::Unchanged };
        if let Some(at) = a.refired_at.as_ref().map(|t| t.0).filter(|t| *t >= applied) {
            return Self::FiredAgain { at };
        }
        match (a.state, a.resolved_at.as_ref().map(|t| t.0)) {
            (AlertState::Resolved, Some(at)) if at >= applied => Self::Resolved { at },
            _ => Self::Unchanged,
        }
    }

    fn note(self) -> String {
        match self {
            Self::Resolved { at } => format!("; the alert resolved at {at}"),
            _ => "; the alert has not resolved yet".into(),
        }
    }
}

/// Fold `value` sampled at `now`, and what the alert says, into `prev`.
pub fn judge(
    rule: &ValidVerify,
    prev: Option<&Verification>,
    value: Option<f64>,
    alert: AlertSince,
    now: Timestamp,
) -> Verification {
    let started = prev.map_or(now, |p| p.started_at.0);
    let mut samples = prev.map(|p| p.samples.clone()).unwrap_or_default();
    let ok = value.is_some_and(|v| rule.holds(v));
    samples.push(Sample { at: Time(now), value, ok });
    let excess = samples.len().saturating_sub(MAX_SAMPLES);
    samples.drain(..excess);
    let streak_start = samples.iter().rev().take_while(|s| s.ok).last().map(|s| s.at.0);
    // Clock skew between replicas must not count as time held: negative spans are zero.
    let span = |from: Timestamp| Duration::try_from(now.duration_since(from)).unwrap_or(Duration::ZERO);
    let held_for = streak_start.map(span);
    let elapsed = span(started);
    let (verdict, message, next) = match (held_for, alert) {
        (_, AlertSince::FiredAgain { at }) => (
            VerificationVerdict::Failed,
            format!("the alert resolved and then fired again at {at}, after the change: {}", describe(rule, value)),
            None,
        ),
        (Some(held), _) if held >= rule.for_ => (
            VerificationVerdict::Passed,
            format!("held for {} ({} samples): {}{}", secs(held), samples.len(), describe(rule, value), alert.note()),
            None,
        ),
        _ if elapsed >= rule.timeout => (
            VerificationVerdict::Failed,
            format!("did not hold for {} within {}: {}", secs(rule.for_), secs(rule.timeout), describe(rule, value)),
            None,
        ),
        _ => (
            VerificationVerdict::Pending,
            describe(rule, value),
            Some(Time(now.checked_add(rule.interval).unwrap_or(now))),
        ),
    };
    Verification { verdict, samples, message: Some(message), started_at: Time(started), next_sample_at: next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(for_: u64, timeout: u64) -> ValidVerify {
        ValidVerify {
            query: "oom_kills".into(),
            operator: Comparison::Less,
            threshold: 1.0,
            for_: Duration::from_secs(for_),
            timeout: Duration::from_secs(timeout),
            interval: Duration::from_secs(1),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    #[test]
    fn passes_once_good_samples_span_the_window() {
        let r = rule(3, 30);
        let mut v = judge(&r, None, Some(2.0), AlertSince::Unchanged, at(0));
        assert_eq!(v.verdict, VerificationVerdict::Pending);
        assert_eq!(v.next_sample_at, Some(Time(at(1))));
        for s in 1..=3 {
            v = judge(&r, Some(&v), Some(0.0), AlertSince::Unchanged, at(s));
            assert_eq!(v.verdict, VerificationVerdict::Pending, "at {s}");
        }
        v = judge(&r, Some(&v), Some(0.0), AlertSince::Unchanged, at(4));
        assert_eq!(v.verdict, VerificationVerdict::Passed, "{:?}", v.message);
        assert_eq!(v.samples.len(), 5);
    }

    #[test]
    fn a_bad_sample_restarts_the_window_and_timeout_fails() {
        let r = rule(2, 5);
        let mut v = judge(&r, None, Some(0.0), AlertSince::Unchanged, at(0));
        v = judge(&r, Some(&v), Some(3.0), AlertSince::Unchanged, at(1));
        v = judge(&r, Some(&v), Some(0.0), AlertSince::Unchanged, at(2));
        v = judge(&r, Some(&v), None, AlertSince::Unchanged, at(3));
        assert_eq!(v.verdict, VerificationVerdict::Pending);
        v = judge(&r, Some(&v), Some(0.0), AlertSince::Unchanged, at(5));
        assert_eq!(v.verdict, VerificationVerdict::Failed);
        assert!(v.message.unwrap().starts_with("did not hold for 2s within 5s"));
    }

    #[test]
    fn zero_window_passes_on_the_first_good_sample() {
        let v = judge(&rule(0, 5), None, Some(0.0), AlertSince::Unchanged, at(0));
        assert_eq!(v.verdict, VerificationVerdict::Passed);
    }

    fn seen(state: AlertState, resolved: Option<i64>, refired: Option<i64>) -> AlertObservation {
        AlertObservation {
            state,
            times_seen: 3,
            first_seen: Time(at(-100)),
            last_seen: Time(at(10)),
            resolved_at: resolved.map(|r| Time(at(r))),
            refired_at: refired.map(|r| Time(at(r))),
            alerts: vec![],
        }
    }

    #[test]
    fn the_alert_is_read_against_the_change() {
        let applied = Some(at(0));
        let of = |a: AlertObservation| AlertSince::of(Some(&a), applied);
        assert_eq!(of(seen(AlertState::Firing, None, None)), AlertSince::Unchanged);
        assert_eq!(of(seen(AlertState::Resolved, Some(-5), None)), AlertSince::Unchanged, "resolved before the change");
        assert_eq!(of(seen(AlertState::Resolved, Some(7), None)), AlertSince::Resolved { at: at(7) });
        assert_eq!(of(seen(AlertState::Firing, Some(7), Some(9))), AlertSince::FiredAgain { at: at(9) });
        assert_eq!(
            of(seen(AlertState::Resolved, Some(12), Some(9))),
            AlertSince::FiredAgain { at: at(9) },
            "and resolved again"
        );
        assert_eq!(
            of(seen(AlertState::Firing, Some(-5), Some(-3))),
            AlertSince::Unchanged,
            "flapped before the change"
        );
        assert_eq!(AlertSince::of(None, applied), AlertSince::Unchanged);
    }

    #[test]
    fn firing_again_after_resolving_fails_at_once_and_a_resolution_never_shortens_the_window() {
        let r = rule(3, 30);
        let resolved = AlertSince::Resolved { at: at(1) };
        let mut v = judge(&r, None, Some(0.0), resolved, at(0));
        v = judge(&r, Some(&v), Some(0.0), resolved, at(1));
        assert_eq!(v.verdict, VerificationVerdict::Pending, "resolved, but the query has held for 1s of 3s");
        let failed = judge(&r, Some(&v), Some(0.0), AlertSince::FiredAgain { at: at(2) }, at(2));
        assert_eq!(failed.verdict, VerificationVerdict::Failed);
        assert!(failed.message.unwrap().contains("fired again"));
        for s in 2..=3 {
            v = judge(&r, Some(&v), Some(0.0), resolved, at(s));
        }
        assert_eq!(v.verdict, VerificationVerdict::Passed);
        assert!(v.message.unwrap().ends_with(&format!("the alert resolved at {}", at(1))));
    }
}
