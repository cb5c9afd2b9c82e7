//! The demo's timeline: what changed in a Remediation's status, as readable lines.
//!
//! Contract: pure. [`changes`] compares two statuses and returns one line per new fact —
//! phase, what was read, the patch as a diff against the target as it was, the dry-run
//! result, the gate decision, the deploy, each verification sample, the verdict, a
//! rollback — each stamped with the time since the alert was posted.

use std::time::Duration;

use crate::api::playbook::PatchType;
use serde_json::Value;

use crate::api::remediation::{ProposalSource, RemediationStatus, VerificationVerdict};
use crate::patch::tree::touched;

fn stamp(at: Duration) -> String {
    format!("[{:>5.1}s]", at.as_secs_f64())
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(unset)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The patch as `path: before → after` lines against the target object as it was.
pub fn diff(patch: &Value, before: &Value) -> Vec<String> {
    let after = touched(patch, patch);
    touched(patch, before)
        .into_iter()
        .zip(after)
        .map(|((path, old), (_, new))| format!("{path}: {} → {}", show(old.as_ref()), show(new.as_ref())))
        .collect()
}

/// Lines for everything `cur` says that `prev` did not.
pub fn changes(prev: &RemediationStatus, cur: &RemediationStatus, before: &Value, at: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let t = stamp(at);
    if cur.diagnosis.is_some()
        && prev.diagnosis.is_none()
        && let Some(d) = &cur.diagnosis
    {
        if let Some(rest) = d.summary.strip_prefix("delegated to agent ") {
            out.push(format!("{t}   delegated the diagnosis over A2A to agent {rest}"));
        }
        for f in &d.findings {
            out.push(format!("{t}   read      {}", f.detail));
        }
    }
    if prev.proposal.is_none()
        && let Some(p) = &cur.proposal
    {
        let format = match p.patch_type {
            PatchType::Strategic => "strategic merge patch",
            PatchType::Merge => "JSON merge patch",
            PatchType::Json => "JSON patch",
        };
        out.push(format!(
            "{t}   proposed  {} ({format}, {})",
            p.rationale,
            p.digest.chars().take(19).collect::<String>()
        ));
        for line in diff(&p.patch.0, before) {
            out.push(format!("{t}             {line}"));
        }
        if p.produced_by == ProposalSource::Llm {
            let tokens = p.tokens.as_ref().map_or(0, |u| u.prompt + u.completion);
            out.push(format!(
                "{t}   llm       {}: {tokens} tokens, ${}",
                p.model.as_deref().unwrap_or("?"),
                p.cost_usd.as_deref().unwrap_or("?")
            ));
            for call in agent_tool_calls(&p.rationale) {
                out.push(format!("{t}   tool      {call}"));
            }
        }
    }
    if prev.ci.is_none()
        && let Some(c) = &cur.ci
    {
        out.push(format!("{t}   tested    {:?}: {}", c.verdict, c.messages.join("; ")));
        if let Some(pr) = &c.pull_request {
            let checks: Vec<String> = pr.checks.iter().map(|k| format!("{} {}", k.name, k.state)).collect();
            out.push(format!("{t}   pr        #{} {} ({}; checks: {})", pr.number, pr.url, pr.file, checks.join(", ")));
        }
    }
    if prev.gate.is_none()
        && let Some(g) = &cur.gate
    {
        out.push(format!("{t}   gate      {:?}: {}", g.decision, g.reason));
    }
    let applied = |s: &RemediationStatus| s.deploy.as_ref().and_then(|d| d.applied_at.clone());
    if applied(prev).is_none()
        && applied(cur).is_some()
        && let Some(d) = &cur.deploy
    {
        match &d.pull_request {
            Some(pr) => out.push(format!(
                "{t}   merged    #{} as {} ({}); previous values recorded at resourceVersion {}",
                pr.number,
                pr.merge_commit.as_deref().unwrap_or("?"),
                d.identity.as_deref().unwrap_or("?"),
                d.previous_resource_version
            )),
            None => out.push(format!(
                "{t}   deployed  as {}, field manager {} ({}); previous values recorded at resourceVersion {}",
                d.identity.as_deref().unwrap_or("?"),
                d.field_manager.as_deref().unwrap_or("?"),
                d.applied_revision.clone().unwrap_or_default(),
                d.previous_resource_version
            )),
        }
    }
    // New samples: by count while the list grows; once status caps it, by time.
    let before = prev.verification.as_ref().map_or(0, |v| v.samples.len());
    let last_shown = prev.verification.as_ref().and_then(|v| v.samples.last()).map(|s| s.at.0);
    if let Some(v) = &cur.verification {
        let query = |s: &RemediationStatus| s.verification.as_ref().and_then(|v| v.query.clone());
        if let Some(q) = query(cur).filter(|q| query(prev).as_ref() != Some(q)) {
            out.push(format!("{t}   checking  {q}"));
        }
        let fresh: Vec<_> = if v.samples.len() > before {
            v.samples[before..].iter().collect()
        } else {
            v.samples.iter().filter(|s| last_shown.is_none_or(|t| s.at.0 > t)).collect()
        };
        for s in fresh {
            let value = match (&s.error, s.value) {
                (Some(e), _) => format!("provider error ({e})"),
                (None, Some(x)) => format!("{x}"),
                (None, None) => "no data".to_owned(),
            };
            out.push(format!("{t}   sample    {value} {}", if s.ok { "✓" } else { "✗" }));
        }
        let verdict = |s: &RemediationStatus| s.verification.as_ref().map(|v| v.verdict);
        if verdict(prev) != Some(v.verdict) && v.verdict != VerificationVerdict::Pending {
            out.push(format!("{t}   verdict   {:?}: {}", v.verdict, v.message.clone().unwrap_or_default()));
        }
    }
    if prev.rollback.is_none()
        && let Some(r) = &cur.rollback
    {
        out.push(format!("{t}   restored  {} ({})", r.reason, r.restored_revision.clone().unwrap_or_default()));
        if let Some(pr) = &r.pull_request {
            out.push(format!(
                "{t}   reverted  by #{} {} merged as {}",
                pr.number,
                pr.url,
                pr.merge_commit.as_deref().unwrap_or("?")
            ));
        }
    }
    out
}

/// The agent's tool calls (`tool 12ms ok`) from the run summary in an LLM proposal's
/// rationale ([`crate::agent::stage::summary`]).
pub fn agent_tool_calls(rationale: &str) -> Vec<String> {
    let Some((_, rest)) = rationale.rsplit_once("tool calls: ") else { return vec![] };
    let list = rest.trim_end_matches(']').trim();
    if list == "none" {
        return vec![];
    }
    list.split(", ").map(str::to_owned).collect()
}

/// A phase transition, from the Event the controller records for it (`"A -> B: why"`).
pub fn transition(note: &str, at: Duration) -> String {
    match note.split_once(": ") {
        Some((phases, why)) => {
            let to = phases.rsplit(" -> ").next().unwrap_or(phases);
            format!("{} {to:<11} {why}", stamp(at))
        }
        None => format!("{} {note}", stamp(at)),
    }
}

/// Measures each step from when it is first seen started to when it is first seen finished.
#[derive(Default)]
pub struct StepClock {
    started: std::collections::HashMap<(crate::api::remediation::Step, u32), Duration>,
    done: std::collections::HashSet<(crate::api::remediation::Step, u32)>,
}

impl StepClock {
    /// Lines for steps that finished since the last call.
    pub fn observe(&mut self, cur: &RemediationStatus, at: Duration) -> Vec<String> {
        use crate::api::remediation::StepState;
        let mut out = Vec::new();
        // Verification samples have their own lines.
        for r in cur.steps.iter().filter(|r| r.step != crate::api::remediation::Step::Verify) {
            let key = (r.step, r.attempt);
            let started = *self.started.entry(key).or_insert(at);
            if r.state != StepState::Started && self.done.insert(key) {
                let took = at.saturating_sub(started);
                out.push(format!(
                    "{}   {:<9} #{} {:?} in {:.2}s",
                    stamp(at),
                    format!("{:?}", r.step).to_lowercase(),
                    r.attempt,
                    r.state,
                    took.as_secs_f64()
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_patch_reads_as_a_diff() {
        let before = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}, "requests": {"memory": "250Mi"}}}]}}}});
        assert_eq!(
            diff(&patch, &before),
            [
                "spec.template.spec.containers[*].resources.limits.memory: 128Mi → 250Mi",
                "spec.template.spec.containers[*].resources.requests.memory: (unset) → 250Mi"
            ]
        );
    }

    #[test]
    fn only_new_facts_are_printed() {
        use crate::api::remediation::{CiBackend, CiResult, CiVerdict};
        let a = RemediationStatus::default();
        let ci = CiResult {
            proposal_digest: "d".into(),
            backend: CiBackend::DryRun,
            verdict: CiVerdict::Passed,
            messages: vec!["ok".into()],
            reference: None,
            target_revision: None,
            diff: None,
            log_tail: Vec::new(),
            pull_request: None,
        };
        let b = RemediationStatus { ci: Some(ci), ..Default::default() };
        let lines = changes(&a, &b, &json!({}), Duration::from_millis(1500));
        assert_eq!(lines, ["[  1.5s]   tested    Passed: ok"]);
        assert!(changes(&b, &b, &json!({}), Duration::ZERO).is_empty());
    }

    #[test]
    fn transitions_read_from_event_notes() {
        assert_eq!(
            transition("Pending -> Diagnosing: reading production", Duration::from_secs(2)),
            "[  2.0s] Diagnosing  reading production"
        );
        assert_eq!(transition("no separator", Duration::ZERO), "[  0.0s] no separator");
    }

    #[test]
    fn step_durations_run_from_first_seen_start_to_first_seen_finish() {
        use crate::api::remediation::{Step, StepRecord, StepState};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let rec = |state| StepRecord {
            step: Step::Diagnose,
            attempt: 1,
            state,
            category: None,
            message: None,
            started_at: Time(jiff::Timestamp::UNIX_EPOCH),
            finished_at: None,
        };
        let mut clock = StepClock::default();
        let started = RemediationStatus { steps: vec![rec(StepState::Started)], ..Default::default() };
        assert!(clock.observe(&started, Duration::from_millis(100)).is_empty());
        let done = RemediationStatus { steps: vec![rec(StepState::Succeeded)], ..Default::default() };
        assert_eq!(clock.observe(&done, Duration::from_millis(350)), ["[  0.3s]   diagnose  #1 Succeeded in 0.25s"]);
        assert!(clock.observe(&done, Duration::from_millis(400)).is_empty(), "reported once");
    }
}
