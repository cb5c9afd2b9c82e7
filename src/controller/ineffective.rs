//! Fixes that do not work: the policy stops trying on a target whose fixes keep failing, or
//! whose alert keeps coming back soon after "successful" ones.
//!
//! Contract: pure, over the policy's per-target history (`status.targets`). Every deployed
//! fix that ends goes in ([`with_fix`]); a Remediation starting on a target whose last fix
//! was verified less than `realertWithin` before marks that fix re-alerted ([`with_realert`]).
//! [`pause_reason`] says when the target should be paused: its last `failedFixes` fixes by
//! one playbook all failed, or its last `realerts` fixes were all verified and re-alerted.
//! A pause holds under the policy generation it was set in ([`paused`]): editing the policy
//! resumes the target. The effectful part (writing the status, escalating) is the
//! reconciler's.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::TargetKind;
use crate::api::policy::{FixRecord, TargetHistory, TargetPause};

/// Most fixes kept per target.
const MAX_FIXES: usize = 20;

fn entry<'a>(history: &'a mut Vec<TargetHistory>, kind: TargetKind, name: &str) -> &'a mut TargetHistory {
    let at = history.iter().position(|t| t.kind == kind && t.name == name).unwrap_or_else(|| {
        history.push(TargetHistory { kind, name: name.to_owned(), fixes: Vec::new(), paused: None });
        history.len() - 1
    });
    &mut history[at]
}

/// The history of one target, if any.
pub fn of<'a>(history: &'a [TargetHistory], kind: TargetKind, name: &str) -> Option<&'a TargetHistory> {
    history.iter().find(|t| t.kind == kind && t.name == name)
}

/// The history with `fix` recorded (once per Remediation).
pub fn with_fix(history: &[TargetHistory], kind: TargetKind, name: &str, fix: FixRecord) -> Vec<TargetHistory> {
    let mut next = history.to_vec();
    let target = entry(&mut next, kind, name);
    if !target.fixes.iter().any(|f| f.uid == fix.uid) {
        target.fixes.push(fix);
        let excess = target.fixes.len().saturating_sub(MAX_FIXES);
        target.fixes.drain(..excess);
    }
    next
}

/// The history with the target's last fix marked re-alerted, when it was verified and
/// ended less than `within` before `at` (a new Remediation of the target starting); None when
/// nothing changes.
pub fn with_realert(
    history: &[TargetHistory],
    kind: TargetKind,
    name: &str,
    at: Time,
    within: Duration,
) -> Option<Vec<TargetHistory>> {
    let last = of(history, kind, name)?.fixes.last()?;
    let since = at.0.duration_since(last.at.0);
    if !last.verified || last.realerted_at.is_some() || since.is_negative() || since.unsigned_abs() >= within {
        return None;
    }
    let mut next = history.to_vec();
    if let Some(fix) = entry(&mut next, kind, name).fixes.last_mut() {
        fix.realerted_at = Some(at);
    }
    Some(next)
}

/// Why the target should be paused now, if it should. Only fixes since an earlier pause
/// count: the policy was edited to end it, and what failed before does not count against
/// what it does now.
pub fn pause_reason(target: &TargetHistory, failed_fixes: u32, realerts: u32, within: Duration) -> Option<String> {
    let since = target.paused.as_ref().map(|p| p.since.0);
    let fixes: Vec<&FixRecord> = target.fixes.iter().filter(|f| since.is_none_or(|s| f.at.0 > s)).collect();
    let recent = |n: u32| {
        let n = n as usize;
        (fixes.len() >= n).then(|| &fixes[fixes.len() - n..])
    };
    if let Some(last) = recent(failed_fixes)
        && last.iter().all(|f| !f.verified && !f.unproven && f.playbook == last[0].playbook)
    {
        let names: Vec<&str> = last.iter().map(|f| f.remediation.as_str()).collect();
        return Some(format!(
            "the last {failed_fixes} fixes by playbook {} failed ({}): {}",
            last[0].playbook.as_deref().unwrap_or("(the agent)"),
            names.join(", "),
            last.iter().map(|f| f.outcome.as_str()).collect::<Vec<_>>().join("; ")
        ));
    }
    if let Some(last) = recent(realerts)
        && last.iter().all(|f| f.verified && f.realerted_at.is_some())
    {
        let names: Vec<&str> = last.iter().map(|f| f.remediation.as_str()).collect();
        return Some(format!(
            "the last {realerts} fixes were verified, and each time the alert came back within {}s ({}): the fix does not last",
            within.as_secs(),
            names.join(", ")
        ));
    }
    None
}

/// The history with the target paused for `reason` under policy `generation`.
pub fn with_pause(
    history: &[TargetHistory],
    kind: TargetKind,
    name: &str,
    reason: String,
    since: Time,
    generation: i64,
) -> Vec<TargetHistory> {
    let mut next = history.to_vec();
    entry(&mut next, kind, name).paused = Some(TargetPause { reason, since, generation });
    next
}

/// The pause in force on a target under policy `generation` (one set under another
/// generation ended when the policy was edited).
pub fn paused<'a>(
    history: &'a [TargetHistory],
    kind: TargetKind,
    name: &str,
    generation: i64,
) -> Option<&'a TargetPause> {
    of(history, kind, name)?.paused.as_ref().filter(|p| p.generation == generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn fix(n: u32, playbook: &str, verified: bool, t: i64) -> FixRecord {
        FixRecord {
            remediation: format!("r-{n}"),
            uid: format!("u-{n}"),
            playbook: Some(playbook.into()),
            verified,
            outcome: if verified { "verified".into() } else { "rolled back: 3 OOM kills".into() },
            unproven: false,
            at: at(t),
            realerted_at: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn history(fixes: Vec<FixRecord>) -> Vec<TargetHistory> {
        fixes.into_iter().fold(Vec::new(), |h, f| with_fix(&h, TargetKind::Deployment, "checkout", f))
    }

    fn reason(h: &[TargetHistory]) -> Option<String> {
        pause_reason(of(h, TargetKind::Deployment, "checkout").unwrap(), 2, 2, HOUR)
    }

    #[test]
    fn two_failed_fixes_by_one_playbook_pause_the_target() {
        assert_eq!(reason(&history(vec![fix(1, "raise", false, 0)])), None);
        let why = reason(&history(vec![fix(1, "raise", false, 0), fix(2, "raise", false, 10)])).unwrap();
        assert!(why.starts_with("the last 2 fixes by playbook raise failed (r-1, r-2)"), "{why}");
        assert_eq!(
            reason(&history(vec![fix(1, "timid", false, 0), fix(2, "raise", false, 10)])),
            None,
            "two playbooks"
        );
        assert_eq!(reason(&history(vec![fix(1, "raise", false, 0), fix(2, "raise", true, 10)])), None);
        // Recorded once per Remediation.
        let h = history(vec![fix(1, "raise", false, 0), fix(1, "raise", false, 0)]);
        assert_eq!(of(&h, TargetKind::Deployment, "checkout").unwrap().fixes.len(), 1);
    }

    #[test]
    fn verified_fixes_the_alert_outlives_pause_the_target() {
        let h = history(vec![fix(1, "raise", true, 0)]);
        // A new alert 10 minutes after the fix: it re-alerted.
        let h = with_realert(&h, TargetKind::Deployment, "checkout", at(600), HOUR).unwrap();
        assert!(with_realert(&h, TargetKind::Deployment, "checkout", at(700), HOUR).is_none(), "marked once");
        assert_eq!(reason(&h), None, "once is not a pattern");
        let h = with_fix(&h, TargetKind::Deployment, "checkout", fix(2, "raise", true, 1000));
        // Two hours later is a new incident, not a re-alert.
        assert!(with_realert(&h, TargetKind::Deployment, "checkout", at(1000 + 7200), HOUR).is_none());
        let h = with_realert(&h, TargetKind::Deployment, "checkout", at(1300), HOUR).unwrap();
        let why = reason(&h).unwrap();
        assert!(why.contains("each time the alert came back within 3600s (r-1, r-2)"), "{why}");
        // A failed fix is not a re-alert.
        let failed = history(vec![fix(3, "raise", false, 0)]);
        assert!(with_realert(&failed, TargetKind::Deployment, "checkout", at(60), HOUR).is_none());
    }

    #[test]
    fn unproven_fixes_are_not_held_against_the_playbook() {
        let unproven = FixRecord { unproven: true, outcome: "Prometheus down".into(), ..fix(1, "raise", false, 0) };
        let h = history(vec![unproven, fix(2, "raise", false, 10)]);
        assert_eq!(reason(&h), None, "a provider outage is not a failed fix");
    }

    #[test]
    fn after_a_pause_ends_only_new_fixes_count() {
        let h = history(vec![fix(1, "raise", false, 0), fix(2, "raise", false, 10)]);
        let h = with_pause(&h, TargetKind::Deployment, "checkout", "x".into(), at(20), 1);
        assert_eq!(reason(&h), None, "the same two failures do not pause it again");
        let h = with_fix(&h, TargetKind::Deployment, "checkout", fix(3, "raise", false, 30));
        assert_eq!(reason(&h), None);
        let h = with_fix(&h, TargetKind::Deployment, "checkout", fix(4, "raise", false, 40));
        assert!(reason(&h).unwrap().contains("(r-3, r-4)"));
    }

    #[test]
    fn a_pause_holds_under_its_generation_only() {
        let h = with_pause(&[], TargetKind::Deployment, "checkout", "x".into(), at(0), 3);
        assert!(paused(&h, TargetKind::Deployment, "checkout", 3).is_some());
        assert!(paused(&h, TargetKind::Deployment, "checkout", 4).is_none(), "the policy was edited");
        assert!(paused(&h, TargetKind::Deployment, "cart", 3).is_none());
    }
}
