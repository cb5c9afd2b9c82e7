//! Guards: metrics a fix must not make worse (error rate, p99 latency), each against its
//! value just before the change.
//!
//! Contract: pure. [`judge_guard`] compares one guard's latest value with its baseline: worse
//! means higher (lower with `lowerIsWorse`) by more than `maxIncreasePercent` of the
//! baseline or `maxIncrease` in its own unit. A guard with no baseline, or no current value
//! (no data, an error, not a number), cannot be judged, which the verdict reports rather than
//! pass over ([`unjudged`]); once worse it stays worse.

use crate::api::policy::GuardSpec;
use crate::api::remediation::GuardStatus;

/// `status` with the guard's latest value `now` judged (None: no data, a provider error or a
/// value that is not a number — then the guard has no current value, which a pass needs).
pub fn judge_guard(spec: &GuardSpec, mut status: GuardStatus, now: Option<f64>) -> GuardStatus {
    status.baseline = status.baseline.filter(|b| b.is_finite());
    let Some(now) = now.filter(|v| v.is_finite()) else {
        status.last = None;
        return status;
    };
    status.last = Some(now);
    if let Some(base) = status.baseline {
        let change = if spec.lower_is_worse { base - now } else { now - base };
        let allowed = match (spec.max_increase_percent, spec.max_increase) {
            (Some(pct), _) => base.abs() * pct / 100.0,
            (None, Some(abs)) => abs,
            (None, None) => 0.0,
        };
        status.worse = status.worse || change > allowed;
    }
    status
}

/// Why a worse guard fails the fix, naming the first.
pub fn worse(specs: &[GuardSpec], statuses: &[GuardStatus]) -> Option<String> {
    let s = statuses.iter().find(|s| s.worse)?;
    let spec = specs.iter().find(|g| g.name == s.name)?;
    let margin = match (spec.max_increase_percent, spec.max_increase) {
        (Some(p), _) => format!("{p}%"),
        (None, Some(a)) => format!("{a}"),
        (None, None) => "0".to_owned(),
    };
    Some(format!(
        "guard {} got worse: {} before the change, {} now ({} is worse; margin {margin})",
        s.name,
        s.baseline.map_or("no data".to_owned(), |v| v.to_string()),
        s.last.map_or("no data".to_owned(), |v| v.to_string()),
        if spec.lower_is_worse { "lower" } else { "higher" },
    ))
}

/// The guards that cannot be judged now: no baseline (no data just before the change, it
/// could not be read, or it was not a number), or no current value (the fix may have killed
/// the metric, or all traffic).
pub fn unjudged(statuses: &[GuardStatus]) -> Vec<&str> {
    statuses.iter().filter(|s| s.baseline.is_none() || s.last.is_none()).map(|s| s.name.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pct: Option<f64>, abs: Option<f64>, lower_is_worse: bool) -> GuardSpec {
        GuardSpec {
            name: "errors".into(),
            query: "q".into(),
            lower_is_worse,
            max_increase_percent: pct,
            max_increase: abs,
        }
    }

    fn base(v: Option<f64>) -> GuardStatus {
        GuardStatus { name: "errors".into(), baseline: v, baseline_read: true, last: None, worse: false }
    }

    #[test]
    fn worse_is_beyond_the_margin_in_the_bad_direction() {
        let pct = spec(Some(10.0), None, false);
        assert!(!judge_guard(&pct, base(Some(0.02)), Some(0.021)).worse, "5% up, margin 10%");
        assert!(judge_guard(&pct, base(Some(0.02)), Some(0.03)).worse, "50% up");
        assert!(!judge_guard(&pct, base(Some(0.02)), Some(0.001)).worse, "better is never worse");
        let abs = spec(None, Some(0.05), false);
        assert!(!judge_guard(&abs, base(Some(0.1)), Some(0.14)).worse);
        assert!(judge_guard(&abs, base(Some(0.1)), Some(0.16)).worse);
        let success = spec(Some(1.0), None, true);
        assert!(judge_guard(&success, base(Some(0.999)), Some(0.95)).worse, "a success rate falling");
        assert!(!judge_guard(&success, base(Some(0.95)), Some(0.999)).worse);
        // From a zero baseline a percentage allows nothing more.
        assert!(judge_guard(&pct, base(Some(0.0)), Some(0.001)).worse);
    }

    #[test]
    fn no_data_now_changes_nothing_and_once_worse_it_stays_worse() {
        let pct = spec(Some(10.0), None, false);
        let worse_once = judge_guard(&pct, base(Some(1.0)), Some(5.0));
        assert!(worse_once.worse);
        let later = judge_guard(&pct, worse_once.clone(), Some(1.0));
        assert!(later.worse, "a spike is not forgiven by a later good sample");
        let silent = judge_guard(&pct, judge_guard(&pct, base(Some(1.0)), Some(1.0)), None);
        assert_eq!(silent.last, None, "no current value");
        assert_eq!(unjudged(std::slice::from_ref(&silent)), ["errors"], "a metric gone silent cannot pass");
        let nan = judge_guard(&pct, base(Some(1.0)), Some(f64::NAN));
        assert_eq!((nan.last, nan.worse), (None, false));
        assert_eq!(unjudged(&[judge_guard(&pct, base(Some(f64::NAN)), Some(1.0))]), ["errors"], "NaN baseline");
        let why = worse(&[pct], &[worse_once]).unwrap();
        assert_eq!(why, "guard errors got worse: 1 before the change, 5 now (higher is worse; margin 10%)");
    }

    #[test]
    fn a_guard_without_a_baseline_is_reported_unjudged() {
        let pct = spec(Some(10.0), None, false);
        let s = judge_guard(&pct, base(None), Some(3.0));
        assert!(!s.worse);
        assert_eq!(unjudged(&[s]), ["errors"]);
    }
}
