//! `reflex explain`: the story of one Remediation, as on-call reads it at 3 AM — what fired,
//! what Reflex did and when (its Events and steps), what it changed, and how the fix was
//! judged, the verification samples drawn as a small chart with the threshold and the
//! verdict.
//!
//! Contract: pure — the caller reads the Remediation and its Events.

use std::fmt::Write as _;

use jiff::Timestamp;

use crate::api::remediation::{CiResult, PullRequestRecord, Remediation, Sample, SampleKind, Verification};

/// One Event about the Remediation.
#[derive(Clone, Debug, PartialEq)]
pub struct Happening {
    /// When.
    pub at: Timestamp,
    /// Its reason (the phase transition's).
    pub reason: String,
    /// What it says.
    pub note: String,
}

fn clock(t: Timestamp) -> String {
    t.strftime("%H:%M:%S").to_string()
}

/// The explanation of `rem`, with its Events `happenings` (any order).
pub fn explain(rem: &Remediation, happenings: &[Happening]) -> String {
    let mut out = String::new();
    let name = rem.metadata.name.as_deref().unwrap_or_default();
    let ns = rem.metadata.namespace.as_deref().unwrap_or_default();
    let status = rem.status.clone().unwrap_or_default();
    let _ = writeln!(out, "Remediation {ns}/{name}: {}", status.phase);
    if let Some(m) = &status.message {
        let _ = writeln!(out, "  {m}");
    }
    let _ = writeln!(
        out,
        "  alert {} (since {}) · target {} {} · policy {}",
        rem.spec.alert.name,
        clock(rem.spec.alert.starts_at.0),
        rem.spec.target.kind.as_str(),
        rem.spec.target.name,
        rem.spec.policy_ref.name
    );
    let _ = writeln!(out, "\nWhat happened");
    let mut events: Vec<&Happening> = happenings.iter().collect();
    events.sort_by_key(|h| h.at);
    if events.is_empty() {
        let _ = writeln!(out, "  (no Events: they expire after an hour; the steps below are from status)");
    }
    for h in events {
        let _ = writeln!(out, "  {}  {:<22} {}", clock(h.at), h.reason, h.note);
    }
    let _ = writeln!(out, "\nSteps");
    for s in &status.steps {
        let took = s.finished_at.as_ref().map(|f| f.0.duration_since(s.started_at.0).as_secs_f64());
        let _ = writeln!(
            out,
            "  {}  {:<9} #{} {:?}{}{}",
            clock(s.started_at.0),
            s.step.as_str(),
            s.attempt,
            s.state,
            took.map(|t| format!(" in {t:.2}s")).unwrap_or_default(),
            s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        );
    }
    if let Some(p) = &status.proposal {
        let _ = writeln!(out, "\nThe change ({:?} patch {}, by {:?})", p.patch_type, p.digest, p.produced_by);
        let _ = writeln!(out, "  {}", p.patch.0);
        let _ = writeln!(out, "  why: {}", p.rationale);
    }
    if let Some(c) = &status.ci {
        out.push_str(&tested(c, status.deploy.as_ref().and_then(|d| d.pull_request.as_ref())));
    }
    if let Some(r) = &status.rollout {
        let _ = writeln!(out, "\nRollout: {:?}: {}", r.state, r.message);
    }
    if let Some(v) = &status.verification {
        out.push_str(&chart(v));
    }
    if let Some(r) = &status.rollback {
        let _ = writeln!(out, "\nRolled back at {}: {}", clock(r.restored_at.0), r.reason);
        if let Some(pr) = &r.pull_request {
            let _ = writeln!(
                out,
                "  revert: pull request #{} {} merged as {}",
                pr.number,
                pr.url,
                pr.merge_commit.as_deref().unwrap_or("?")
            );
        }
    }
    let _ = writeln!(out, "\nAct: kubectl reflex describe {name} -n {ns}");
    out
}

/// How the change was tested: the verdict and messages, the diff the dry-run answered, the
/// test Job's last lines, and for a GitOps change its pull request, each check, and (once
/// deployed) the merge commit.
pub fn tested(c: &CiResult, merged: Option<&PullRequestRecord>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nTested ({:?}): {:?}", c.backend, c.verdict);
    for m in &c.messages {
        let _ = writeln!(out, "  {m}");
    }
    if let Some(pr) = merged.or(c.pull_request.as_ref()) {
        let _ = writeln!(
            out,
            "  pull request #{} {} (branch {}, commit {}, {})",
            pr.number, pr.url, pr.branch, pr.commit, pr.file
        );
        for check in &pr.checks {
            let _ = writeln!(
                out,
                "    check {} {}{}",
                check.name,
                check.state,
                check.url.as_deref().map(|u| format!(" {u}")).unwrap_or_default()
            );
        }
        if let Some(m) = &pr.merge_commit {
            let _ = writeln!(out, "  merged as {m}");
        }
    }
    if !c.log_tail.is_empty() {
        let _ = writeln!(out, "  test Job {} printed:", c.reference.as_deref().unwrap_or("?"));
        for l in &c.log_tail {
            let _ = writeln!(out, "    | {l}");
        }
    }
    if let Some(d) = &c.diff {
        let _ = writeln!(out, "  live → dry-run:");
        for l in d.lines() {
            let _ = writeln!(out, "    {l}");
        }
    }
    out
}

/// The verification: its query, the samples as a chart (one column per sample, newest
/// right), the threshold line, and the verdict.
pub fn chart(v: &Verification) -> String {
    const ROWS: usize = 6;
    let mut out = String::new();
    let _ = writeln!(out, "\nVerification: {:?}", v.verdict);
    if let Some(q) = &v.query {
        let _ = writeln!(out, "  checking {q}");
    }
    if let Some(c) = &v.condition {
        let _ = writeln!(out, "  holding  {c}");
    }
    let samples: Vec<&Sample> = v.samples.iter().collect();
    if samples.is_empty() {
        let _ = writeln!(out, "  (no samples yet)");
    } else {
        let threshold = v.threshold.filter(|t| t.is_finite());
        let values: Vec<f64> =
            samples.iter().filter_map(|s| s.value).chain(threshold).filter(|x| x.is_finite()).collect();
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let (lo, hi) = if lo.is_finite() { (lo.min(0.0), hi.max(lo + 1e-9)) } else { (0.0, 1.0) };
        let row_of = |x: f64| (((x - lo) / (hi - lo)) * (ROWS - 1) as f64).round() as usize;
        let threshold_row = threshold.map(row_of);
        for row in (0..ROWS).rev() {
            let label = lo + (hi - lo) * row as f64 / (ROWS - 1) as f64;
            let on_threshold = threshold_row == Some(row);
            let mut line = format!("  {label:>9.3} {}", if on_threshold { '┼' } else { '┤' });
            for s in &samples {
                let mark = match (s.kind(), s.value.filter(|x| x.is_finite())) {
                    (SampleKind::Good, Some(x)) if row_of(x) == row => '●',
                    (SampleKind::Bad, Some(x)) if row_of(x) == row => '✗',
                    (SampleKind::NoData, _) if row == 0 => '·',
                    (SampleKind::Error, _) if row == 0 => '!',
                    _ if on_threshold => '─',
                    _ => ' ',
                };
                line.push(mark);
            }
            if on_threshold {
                line.push_str(&format!(" threshold {}", threshold.unwrap_or_default()));
            }
            let _ = writeln!(out, "{line}");
        }
        let first = samples.first().map(|s| clock(s.at.0)).unwrap_or_default();
        let last = samples.last().map(|s| clock(s.at.0)).unwrap_or_default();
        let _ = writeln!(out, "            └{}", "─".repeat(samples.len()));
        let _ = writeln!(out, "             {first} … {last}   ● held  ✗ broke  · no data  ! provider error");
    }
    for g in &v.guards {
        let _ = writeln!(
            out,
            "  guard {}: {} before, {} now{}",
            g.name,
            g.baseline.map_or("–".to_owned(), |x| x.to_string()),
            g.last.map_or("–".to_owned(), |x| x.to_string()),
            if g.worse { " — WORSE" } else { "" }
        );
    }
    if let Some(m) = &v.message {
        let _ = writeln!(out, "  verdict: {m}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rem() -> Remediation {
        serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "checkout-oom-1", "namespace": "shop"},
            "spec": {"policyRef": {"name": "checkout-oom"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                     "alert": {"name": "KubeContainerOOMKilled", "fingerprint": "f", "startsAt": "2026-01-01T10:00:00Z"}},
            "status": {"phase": "Succeeded", "message": "held for 2s",
                "proposal": {"patchType": "strategic", "digest": "sha256:ab", "patch": {"spec": {"replicas": 3}}, "rationale": "scale out", "producedBy": "playbook"},
                "verification": {"verdict": "Passed", "startedAt": "2026-01-01T10:01:00Z", "query": "sum(oom_kills)", "message": "held for 2s",
                    "condition": "< 1 for 2s", "threshold": 1.0,
                    "samples": [
                        {"at": "2026-01-01T10:01:00Z", "value": 3.0, "ok": false},
                        {"at": "2026-01-01T10:01:01Z", "ok": false},
                        {"at": "2026-01-01T10:01:02Z", "ok": false, "error": "503"},
                        {"at": "2026-01-01T10:01:03Z", "value": 0.0, "ok": true},
                        {"at": "2026-01-01T10:01:04Z", "value": 0.0, "ok": true}]}}}))
        .unwrap()
    }

    #[test]
    fn a_gitops_change_shows_its_pull_request_checks_and_merge_commit() {
        let c: CiResult = serde_json::from_value(serde_json::json!({"proposalDigest": "d", "backend": "gitops", "verdict": "Passed",
            "messages": ["server-side dry-run accepted the patch"], "diff": "--- live\n+++ dry-run\n-  memory: 128Mi\n+  memory: 256Mi\n",
            "pullRequest": {"number": 7, "url": "https://github.com/o/r/pull/7", "branch": "reflex/x", "commit": "abc", "baseCommit": "b0",
                "file": "apps/web.yaml", "checks": [{"name": "ci/test", "state": "success", "url": "https://ci/1"}]}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut merged = c.pull_request.clone().unwrap_or_default();
        merged.merge_commit = Some("m3rge".into());
        let text = tested(&c, Some(&merged));
        assert!(
            text.contains("pull request #7 https://github.com/o/r/pull/7 (branch reflex/x, commit abc, apps/web.yaml)"),
            "{text}"
        );
        assert!(text.contains("    check ci/test success https://ci/1"), "{text}");
        assert!(text.contains("  merged as m3rge"), "{text}");
        assert!(text.contains("    +  memory: 256Mi"), "{text}");
        assert!(!tested(&c, None).contains("merged as"));
    }

    #[test]
    fn the_story_reads_in_order_with_the_chart() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let events = [
            Happening {
                at: at("2026-01-01T10:00:59Z"),
                reason: "Deployed".into(),
                note: "Deploying -> Verifying".into(),
            },
            Happening {
                at: at("2026-01-01T10:00:30Z"),
                reason: "Started".into(),
                note: "Pending -> Diagnosing".into(),
            },
        ];
        let text = explain(&rem(), &events);
        let started = text.find("Started").unwrap();
        let deployed = text.find("Deployed").unwrap();
        assert!(started < deployed, "events in time order:\n{text}");
        assert!(text.contains("Remediation shop/checkout-oom-1: Succeeded"), "{text}");
        assert!(text.contains(r#"{"spec":{"replicas":3}}"#), "{text}");
        assert!(text.contains("checking sum(oom_kills)"), "{text}");
        // One column per sample: bad high, no data and error on the bottom row, good at zero.
        let rows: Vec<&str> = text.lines().filter(|l| l.contains('┤') || l.contains('┼')).collect();
        assert_eq!(rows.len(), 6, "{text}");
        assert!(rows[0].ends_with("✗    "), "the bad sample at the top: {:?}", rows[0]);
        assert!(rows[5].ends_with(" ·!●●"), "no data, error, then good at zero: {:?}", rows[5]);
        let line = rows.iter().find(|r| r.contains('┼')).unwrap();
        assert!(line.ends_with("───── threshold 1"), "the threshold line: {line:?}");
        assert!(text.contains("holding  < 1 for 2s"), "the condition and window: {text}");
        assert!(text.contains("verdict: held for 2s"), "{text}");
        assert!(text.contains("Act: kubectl reflex describe checkout-oom-1 -n shop"), "{text}");
    }
}
