//! The pure core of verification: fold one sample into the verification so far and decide.
//!
//! Contract: a fix *holds* when every sample in a contiguous run of good samples spanning at
//! least `for` is good; it *fails* when `timeout` has passed since the first sample without
//! that. A sample with no data is not good (an absent series proves nothing). Samples are
//! capped at [`MAX_SAMPLES`], oldest dropped.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::policy::Comparison;
use crate::api::remediation::{MAX_SAMPLES, Sample, Verification, VerificationVerdict};
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

/// Fold `value` sampled at `now` into `prev`.
pub fn judge(rule: &ValidVerify, prev: Option<&Verification>, value: Option<f64>, now: Timestamp) -> Verification {
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
    let (verdict, message, next) = match held_for {
        Some(held) if held >= rule.for_ => (
            VerificationVerdict::Passed,
            format!("held for {} ({} samples): {}", secs(held), samples.len(), describe(rule, value)),
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
        let mut v = judge(&r, None, Some(2.0), at(0));
        assert_eq!(v.verdict, VerificationVerdict::Pending);
        assert_eq!(v.next_sample_at, Some(Time(at(1))));
        for s in 1..=3 {
            v = judge(&r, Some(&v), Some(0.0), at(s));
            assert_eq!(v.verdict, VerificationVerdict::Pending, "at {s}");
        }
        v = judge(&r, Some(&v), Some(0.0), at(4));
        assert_eq!(v.verdict, VerificationVerdict::Passed, "{:?}", v.message);
        assert_eq!(v.samples.len(), 5);
    }

    #[test]
    fn a_bad_sample_restarts_the_window_and_timeout_fails() {
        let r = rule(2, 5);
        let mut v = judge(&r, None, Some(0.0), at(0));
        v = judge(&r, Some(&v), Some(3.0), at(1));
        v = judge(&r, Some(&v), Some(0.0), at(2));
        v = judge(&r, Some(&v), None, at(3));
        assert_eq!(v.verdict, VerificationVerdict::Pending);
        v = judge(&r, Some(&v), Some(0.0), at(5));
        assert_eq!(v.verdict, VerificationVerdict::Failed);
        assert!(v.message.unwrap().starts_with("did not hold for 2s within 5s"));
    }

    #[test]
    fn zero_window_passes_on_the_first_good_sample() {
        let v = judge(&rule(0, 5), None, Some(0.0), at(0));
        assert_eq!(v.verdict, VerificationVerdict::Passed);
    }
}
