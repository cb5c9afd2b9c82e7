//! The pure core of verification: fold one reading into the verification so far and decide
//! one of four verdicts, after Argo Rollouts' analysis.
//!
//! Contract: each reading is a sample that is *good* (the condition holds), *bad* (it does
//! not), *no data* (no series: proves nothing) or an *error* (the metrics provider failed:
//! proves nothing, and is never a bad sample). In that order:
//! - the alert resolved after the change and then fired again: **Failed**, whatever the
//!   query says ([`AlertSince`]; a resolution never shortens the window — Alertmanager's
//!   resolution lags and can be premature — it is reported with the verdict);
//! - the provider rejected the query, or failed more than `consecutiveErrorLimit` times in a
//!   row: **Error**;
//! - more bad samples than `failureLimit` (when set): **Failed**;
//! - more no-data samples than `inconclusiveLimit` (when set): **Inconclusive**;
//! - good samples spanning `for` without a bad or no-data sample between them (errors
//!   neither count nor break the run, and time is measured between good samples): **Passed**;
//! - `timeout` since the first sample: **Failed** if the latest good-or-bad sample was bad,
//!   else **Inconclusive** (neither held nor failed — no data, too few samples);
//! - otherwise **Pending**, with the next sample due after `interval`.
//!
//! Before the first sample the verification waits `initialDelay` from the rollout
//! ([`waiting`]). Samples are capped at [`MAX_SAMPLES`] (oldest dropped); the counts the
//! limits compare are kept in full in the message.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::policy::Comparison;
use crate::api::remediation::{
    AlertObservation, AlertState, GuardStatus, MAX_SAMPLES, Sample, SampleKind, Verification, VerificationVerdict,
};
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

fn describe(rule: &ValidVerify, reading: &Reading) -> String {
    let query = rule.query.as_deref().unwrap_or("the alert's rule");
    match reading {
        Reading::Value(Some(v)) if rule.pass_when_empty => format!("{query} = {v}: the alert's condition still holds"),
        Reading::Value(None) if rule.pass_when_empty => {
            format!("{query} returned nothing: the alert's condition is clear")
        }
        Reading::Value(Some(v)) => format!("{query} = {v} (want {} {})", symbol(rule.operator), rule.threshold),
        Reading::Value(None) => format!("{query} returned no data"),
        Reading::Unavailable(e) => format!("the metrics provider failed: {e}"),
        Reading::Rejected(e) => format!("the metrics provider rejected {query}: {e}"),
        Reading::Underivable(e) => format!("no check could be derived from the alert: {e}"),
        Reading::SeriesGone(q) => {
            format!("{query} returned nothing, and neither did the series it reads ({q}): no data")
        }
    }
}

/// The condition each sample is held to, and the window.
fn condition(rule: &ValidVerify) -> String {
    if rule.pass_when_empty {
        format!("no series for {}", secs(rule.for_))
    } else {
        format!("{} {} for {}", symbol(rule.operator), rule.threshold, secs(rule.for_))
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// What the metrics provider answered for one sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// The value (worst series), or None for no data.
    Value(Option<f64>),
    /// It could not answer (unreachable, 5xx, timeout): retried at the next sample.
    Unavailable(String),
    /// It refused the query (bad PromQL): no sample will ever measure anything.
    Rejected(String),
    /// The check derived from the alert returned nothing, and so did the series it reads:
    /// not "clear" but gone (no data).
    SeriesGone(String),
    /// No check could be derived from the alert (no such rule, an ambiguous or unparsable
    /// one, or a scoped expression that does not see the alert's series): Inconclusive at
    /// once, never a silent pass.
    Underivable(String),
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

/// Before the first sample: a verification that waits until `due` (the rollout plus
/// `initialDelay`), or None when the first sample is due now.
pub fn waiting(
    rule: &ValidVerify,
    prev: Option<&Verification>,
    due: Timestamp,
    now: Timestamp,
) -> Option<Verification> {
    if prev.is_some_and(|p| !p.samples.is_empty()) || now >= due {
        return None;
    }
    Some(Verification {
        verdict: VerificationVerdict::Pending,
        samples: Vec::new(),
        message: Some(format!(
            "waiting {} (initialDelay) after the rollout before the first sample",
            secs(rule.initial_delay)
        )),
        started_at: Time(due),
        next_sample_at: Some(Time(due)),
        action: None,
        query: rule.query.clone(),
        guards: Vec::new(),
        reproduced: prev.is_some_and(|p| p.reproduced),
        condition: Some(condition(rule)),
        threshold: (!rule.pass_when_empty).then_some(rule.threshold),
    })
}

/// Fold `reading` taken at `now`, what the alert says and the guards as they stand
/// ([`super::guard`]), into `prev`. A guard that got worse fails the fix whatever the query
/// says; a fix that would pass with a guard that cannot be judged is Inconclusive.
pub fn judge(
    rule: &ValidVerify,
    prev: Option<&Verification>,
    reading: Reading,
    alert: AlertSince,
    guards: Vec<GuardStatus>,
    now: Timestamp,
) -> Verification {
    let started = prev.filter(|p| !p.samples.is_empty()).map_or(now, |p| p.started_at.0);
    let mut samples = prev.map(|p| p.samples.clone()).unwrap_or_default();
    if let Reading::Underivable(_) = reading {
        return Verification {
            verdict: VerificationVerdict::Inconclusive,
            samples,
            message: Some(describe(rule, &reading)),
            started_at: Time(started),
            next_sample_at: None,
            action: Some(rule.on_inconclusive),
            query: rule.query.clone(),
            guards,
            reproduced: prev.is_some_and(|p| p.reproduced),
            condition: Some(condition(rule)),
            threshold: (!rule.pass_when_empty).then_some(rule.threshold),
        };
    }
    let (value, error) = match &reading {
        Reading::Value(v) => (*v, None),
        Reading::SeriesGone(_) => (None, None),
        Reading::Unavailable(e) | Reading::Rejected(e) | Reading::Underivable(e) => (None, Some(e.clone())),
    };
    // Checking an alert's own rule, no series is the good answer and any series a bad one —
    // unless the series it reads are gone too (no data).
    let gone = matches!(reading, Reading::SeriesGone(_));
    let (value, ok) = match (rule.pass_when_empty, value, &error) {
        (_, _, Some(_)) => (value, false),
        (true, None, None) if gone => (None, false),
        (true, None, None) => (Some(0.0), true),
        (true, Some(v), None) => (Some(v), false),
        (false, v, None) => (v, v.is_some_and(|v| rule.holds(v))),
    };
    samples.push(Sample { at: Time(now), value, ok, error });
    let excess = samples.len().saturating_sub(MAX_SAMPLES);
    samples.drain(..excess);

    let count = |k: SampleKind| samples.iter().filter(|s| s.kind() == k).count();
    let (bad, no_data) = (count(SampleKind::Bad), count(SampleKind::NoData));
    let errors_in_a_row = samples.iter().rev().take_while(|s| s.kind() == SampleKind::Error).count();
    // The run of good samples at the end, errors neither counting nor breaking it.
    let decided: Vec<&Sample> = samples.iter().filter(|s| s.kind() != SampleKind::Error).collect();
    let run: Vec<&&Sample> = decided.iter().rev().take_while(|s| s.kind() == SampleKind::Good).collect();
    // Clock skew between replicas must not count as time held: negative spans are zero.
    let span = |from: Timestamp, to: Timestamp| Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO);
    let held_for = match (run.last(), run.first()) {
        (Some(first), Some(last)) => Some(span(first.at.0, last.at.0)),
        _ => None,
    };
    let last_decided = samples.iter().rev().map(Sample::kind).find(|k| matches!(k, SampleKind::Good | SampleKind::Bad));
    let elapsed = span(started, now);
    let tally =
        format!("{} samples: {bad} bad, {no_data} without data, {} errors", samples.len(), count(SampleKind::Error));
    let now_says = describe(rule, &reading);
    let over = |limit: Option<u32>, n: usize| limit.is_some_and(|l| n > l as usize);
    let unjudged = super::guard::unjudged(&guards);
    let (verdict, message) = if let Some(why) = super::guard::worse(&rule.guards, &guards) {
        (VerificationVerdict::Failed, format!("{why}; {now_says}"))
    } else if let AlertSince::FiredAgain { at } = alert {
        (
            VerificationVerdict::Failed,
            format!("the alert resolved and then fired again at {at}, after the change: {now_says}"),
        )
    } else if let Reading::Rejected(_) = reading {
        (VerificationVerdict::Error, format!("{now_says}; no sample can measure anything: fix the query"))
    } else if errors_in_a_row > rule.consecutive_error_limit as usize {
        (
            VerificationVerdict::Error,
            format!(
                "the metrics provider failed {errors_in_a_row} times in a row (consecutiveErrorLimit {}): {now_says}",
                rule.consecutive_error_limit
            ),
        )
    } else if over(rule.failure_limit, bad) {
        (
            VerificationVerdict::Failed,
            format!("{bad} samples broke the condition (failureLimit {}): {now_says}", rule.failure_limit.unwrap_or(0)),
        )
    } else if over(rule.inconclusive_limit, no_data) {
        (
            VerificationVerdict::Inconclusive,
            format!(
                "{no_data} samples had no data (inconclusiveLimit {}): {now_says}",
                rule.inconclusive_limit.unwrap_or(0)
            ),
        )
    } else if let Some(held) = held_for.filter(|h| *h >= rule.for_) {
        if unjudged.is_empty() {
            (VerificationVerdict::Passed, format!("held for {} ({tally}): {now_says}{}", secs(held), alert.note()))
        } else {
            (
                VerificationVerdict::Inconclusive,
                format!(
                    "held for {}, but guard {} has no value just before the change or now, so the fix's harm cannot be judged (use `or vector(0)` if no data means zero): {now_says}",
                    secs(held),
                    unjudged.join(", ")
                ),
            )
        }
    } else if elapsed >= rule.timeout && last_decided == Some(SampleKind::Bad) {
        (
            VerificationVerdict::Failed,
            format!("did not hold for {} within {} ({tally}): {now_says}", secs(rule.for_), secs(rule.timeout)),
        )
    } else if elapsed >= rule.timeout {
        (
            VerificationVerdict::Inconclusive,
            format!(
                "neither held for {} nor failed within {} ({tally}): {now_says}",
                secs(rule.for_),
                secs(rule.timeout)
            ),
        )
    } else {
        (VerificationVerdict::Pending, now_says)
    };
    let next = (verdict == VerificationVerdict::Pending).then(|| Time(now.checked_add(rule.interval).unwrap_or(now)));
    let action = match verdict {
        VerificationVerdict::Inconclusive => Some(rule.on_inconclusive),
        VerificationVerdict::Error => Some(rule.on_error),
        _ => None,
    };
    Verification {
        verdict,
        samples,
        message: Some(message),
        started_at: Time(started),
        next_sample_at: next,
        action,
        query: rule.query.clone(),
        guards,
        reproduced: prev.is_some_and(|p| p.reproduced),
        condition: Some(condition(rule)),
        threshold: (!rule.pass_when_empty).then_some(rule.threshold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(for_: u64, timeout: u64) -> ValidVerify {
        ValidVerify {
            query: Some("oom_kills".into()),
            operator: Comparison::Less,
            threshold: 1.0,
            for_: Duration::from_secs(for_),
            timeout: Duration::from_secs(timeout),
            interval: Duration::from_secs(1),
            initial_delay: Duration::ZERO,
            failure_limit: None,
            inconclusive_limit: None,
            consecutive_error_limit: 4,
            on_inconclusive: crate::api::policy::VerdictAction::Escalate,
            on_error: crate::api::policy::VerdictAction::Escalate,
            pass_when_empty: false,
            guards: Vec::new(),
        }
    }

    fn val(x: f64) -> Reading {
        Reading::Value(Some(x))
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    #[test]
    fn passes_once_good_samples_span_the_window() {
        let r = rule(3, 30);
        let mut v = judge(&r, None, val(2.0), AlertSince::Unchanged, Vec::new(), at(0));
        assert_eq!(v.verdict, VerificationVerdict::Pending);
        assert_eq!(v.next_sample_at, Some(Time(at(1))));
        for s in 1..=3 {
            v = judge(&r, Some(&v), val(0.0), AlertSince::Unchanged, Vec::new(), at(s));
            assert_eq!(v.verdict, VerificationVerdict::Pending, "at {s}");
        }
        v = judge(&r, Some(&v), val(0.0), AlertSince::Unchanged, Vec::new(), at(4));
        assert_eq!(v.verdict, VerificationVerdict::Passed, "{:?}", v.message);
        assert_eq!(v.samples.len(), 5);
    }

    #[test]
    fn a_bad_sample_restarts_the_window_and_timeout_fails() {
        let r = rule(2, 5);
        let mut v = judge(&r, None, val(0.0), AlertSince::Unchanged, Vec::new(), at(0));
        v = judge(&r, Some(&v), val(3.0), AlertSince::Unchanged, Vec::new(), at(1));
        v = judge(&r, Some(&v), val(0.0), AlertSince::Unchanged, Vec::new(), at(2));
        v = judge(&r, Some(&v), Reading::Value(None), AlertSince::Unchanged, Vec::new(), at(3));
        assert_eq!(v.verdict, VerificationVerdict::Pending);
        let still_bad = judge(&r, Some(&v), val(3.0), AlertSince::Unchanged, Vec::new(), at(5));
        assert_eq!(still_bad.verdict, VerificationVerdict::Failed);
        assert!(still_bad.message.unwrap().starts_with("did not hold for 2s within 5s"));
        // Good at the timeout but not for the window: nothing proven either way.
        let undecided = judge(&r, Some(&v), val(0.0), AlertSince::Unchanged, Vec::new(), at(5));
        assert_eq!(undecided.verdict, VerificationVerdict::Inconclusive);
        assert!(undecided.message.unwrap().starts_with("neither held for 2s nor failed within 5s"));
    }

    /// Every kind of sample against every limit: the sequence is read one sample a second
    /// (g good, b bad, n no data, e provider error, r query rejected); `for` 3s, `timeout` 10s.
    #[test]
    fn the_verdict_table() {
        use VerificationVerdict::{Error, Failed, Inconclusive, Passed, Pending};
        struct Case {
            samples: &'static str,
            failure_limit: Option<u32>,
            inconclusive_limit: Option<u32>,
            error_limit: u32,
            want: VerificationVerdict,
        }
        let case = |samples, failure_limit, inconclusive_limit, error_limit, want| Case {
            samples,
            failure_limit,
            inconclusive_limit,
            error_limit,
            want,
        };
        let cases = [
            // Passing: good samples spanning `for`; errors neither count nor break the run.
            case("gggg", None, None, 4, Passed),
            case("ggeegg", None, None, 4, Passed),
            case("bbgggg", None, None, 4, Passed),
            case("ggg", None, None, 4, Pending),
            case("ggng", None, None, 4, Pending),
            case("ggbg", None, None, 4, Pending),
            // failureLimit: unset, bad samples only restart the window; set, they fail it.
            case("bbbbb", None, None, 4, Pending),
            case("b", Some(0), None, 4, Failed),
            case("gbgb", Some(1), None, 4, Failed),
            case("gbg", Some(1), None, 4, Pending),
            // inconclusiveLimit: unset, no data waits; set, it decides.
            case("nnnnn", None, None, 4, Pending),
            case("n", None, Some(0), 4, Inconclusive),
            case("gngn", None, Some(1), 4, Inconclusive),
            case("gng", None, Some(1), 4, Pending),
            // Errors: only in a row, beyond the limit; never a bad sample.
            case("eeee", Some(0), None, 4, Pending),
            case("eeeee", Some(0), None, 4, Error),
            case("eeeegeeee", Some(0), None, 4, Pending),
            case("e", None, None, 0, Error),
            case("gr", None, None, 4, Error),
            // The timeout (10s from the first sample): the latest deciding sample decides.
            case("bbbbbbbbbbb", None, None, 4, Failed),
            case("bgbgbgbgbgb", None, None, 4, Failed),
            case("nnnnnnnnnnn", None, None, 4, Inconclusive),
            case("gbgbgbgbgbg", None, None, 4, Inconclusive),
            case("bbbbbbbbbbn", None, None, 4, Failed),
            case("ggnggnggngg", None, None, 4, Inconclusive),
            case("beeeeeeeeee", None, None, 100, Failed),
            case("eeeeeeeeeee", None, None, 100, Inconclusive),
        ];
        for c in cases {
            let mut r = rule(3, 10);
            r.failure_limit = c.failure_limit;
            r.inconclusive_limit = c.inconclusive_limit;
            r.consecutive_error_limit = c.error_limit;
            let mut v: Option<Verification> = None;
            for (i, code) in c.samples.chars().enumerate() {
                let reading = match code {
                    'g' => val(0.0),
                    'b' => val(5.0),
                    'n' => Reading::Value(None),
                    'e' => Reading::Unavailable("connection refused".into()),
                    _ => Reading::Rejected("parse error".into()),
                };
                let next = judge(&r, v.as_ref(), reading, AlertSince::Unchanged, Vec::new(), at(i as i64));
                v = Some(next);
            }
            let v = v.unwrap();
            assert_eq!(
                v.verdict, c.want,
                "{} ({:?}/{:?}/{}): {:?}",
                c.samples, c.failure_limit, c.inconclusive_limit, c.error_limit, v.message
            );
            assert_eq!(
                v.next_sample_at.is_some(),
                c.want == Pending,
                "{}: a sample is due only while pending",
                c.samples
            );
        }
    }

    #[test]
    fn a_provider_error_is_recorded_but_never_a_bad_sample() {
        let r = rule(3, 10);
        let v = judge(
            &r,
            None,
            Reading::Unavailable("503 Service Unavailable".into()),
            AlertSince::Unchanged,
            Vec::new(),
            at(0),
        );
        let sample = &v.samples[0];
        assert_eq!(sample.kind(), crate::api::remediation::SampleKind::Error);
        assert!(!sample.ok);
        assert_eq!(sample.error.as_deref(), Some("503 Service Unavailable"));
        assert!(v.message.unwrap().contains("the metrics provider failed: 503"));
    }

    #[test]
    fn the_first_sample_waits_out_the_initial_delay() {
        let mut r = rule(3, 10);
        r.initial_delay = Duration::from_secs(30);
        let waiting = waiting(&r, None, at(30), at(5)).unwrap();
        assert_eq!(waiting.verdict, VerificationVerdict::Pending);
        assert_eq!(waiting.next_sample_at, Some(Time(at(30))));
        assert!(waiting.samples.is_empty());
        assert!(super::waiting(&r, Some(&waiting), at(30), at(30)).is_none(), "due: sample");
        // The timeout runs from the first sample, not from the rollout.
        let first = judge(&r, Some(&waiting), val(5.0), AlertSince::Unchanged, Vec::new(), at(31));
        assert_eq!(first.started_at, Time(at(31)));
    }

    #[test]
    fn zero_window_passes_on_the_first_good_sample() {
        let v = judge(&rule(0, 5), None, val(0.0), AlertSince::Unchanged, Vec::new(), at(0));
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
        let mut v = judge(&r, None, val(0.0), resolved, Vec::new(), at(0));
        v = judge(&r, Some(&v), val(0.0), resolved, Vec::new(), at(1));
        assert_eq!(v.verdict, VerificationVerdict::Pending, "resolved, but the query has held for 1s of 3s");
        let failed = judge(&r, Some(&v), val(0.0), AlertSince::FiredAgain { at: at(2) }, Vec::new(), at(2));
        assert_eq!(failed.verdict, VerificationVerdict::Failed);
        assert!(failed.message.unwrap().contains("fired again"));
        for s in 2..=3 {
            v = judge(&r, Some(&v), val(0.0), resolved, Vec::new(), at(s));
        }
        assert_eq!(v.verdict, VerificationVerdict::Passed);
        assert!(v.message.unwrap().ends_with(&format!("the alert resolved at {}", at(1))));
    }
}
