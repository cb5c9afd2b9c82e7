//! Table-driven tests of `decide`: every phase against every kind of observation.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use super::*;
use crate::api::conditions::reason as r;
use crate::api::remediation::*;
use crate::api::{AnyJson, ApprovalDecision, ErrorCategory, LocalObjectRef, TargetKind};
use crate::patch::fixtures;

const T0: i64 = 1_700_000_000;

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(T0 + secs).unwrap())
}

fn proposal() -> Proposal {
    fixtures::proposal(
        serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}}}]}}}}),
    )
}

fn ci(verdict: CiVerdict, digest: &str) -> CiResult {
    CiResult {
        proposal_digest: digest.into(),
        backend: CiBackend::DryRun,
        verdict,
        messages: vec!["dry-run: field is immutable".into()],
        reference: None,
        target_revision: None,
        diff: None,
        log_tail: Vec::new(),
        pull_request: None,
    }
}

fn snapshot() -> DeployRecord {
    DeployRecord {
        previous: AnyJson(serde_json::json!({"memory": "256Mi"})),
        previous_resource_version: "41".into(),
        applied_digest: None,
        applied_revision: None,
        identity: None,
        field_manager: None,
        applied_at: None,
        pull_request: None,
    }
}

/// A Remediation in `phase` with everything that phase presupposes already recorded.
fn mk_remediation(phase: Phase) -> Remediation {
    let mut rem = Remediation::new(
        "checkout-oom-1",
        RemediationSpec {
            policy_ref: LocalObjectRef { name: "checkout-oom".into() },
            alert: AlertRef {
                name: "KubeContainerOOMKilled".into(),
                fingerprint: "a1b2c3d4e5f60718".into(),
                labels: Default::default(),
                annotations: Default::default(),
                starts_at: at(-60),
                generator_url: None,
            },
            target: TargetRef { api_version: "apps/v1".into(), kind: TargetKind::Deployment, name: "checkout".into() },
            cancel: false,
        },
    );
    rem.metadata = ObjectMeta {
        name: Some("checkout-oom-1".into()),
        namespace: Some("shop".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    };
    let mut s = RemediationStatus { phase, started_at: Some(at(0)), ..Default::default() };
    let p = proposal();
    let d = p.digest.clone();
    use Phase::*;
    if matches!(
        phase,
        Proposed | Testing | AwaitingApproval | Deploying | Verifying | RollingBack | Succeeded | RolledBack
    ) {
        s.diagnosis = Some(Diagnosis { summary: "OOM".into(), findings: vec![] });
        s.proposal = Some(p);
    }
    if matches!(phase, AwaitingApproval | Deploying | Verifying | RollingBack | Succeeded | RolledBack) {
        s.ci = Some(ci(CiVerdict::Passed, &d));
        s.gate =
            Some(GateResult { decision: GateDecision::ApprovalRequired, reason: "production".into(), identity: None });
    }
    if matches!(phase, Verifying | RollingBack | Succeeded | RolledBack) {
        s.deploy = Some(DeployRecord { applied_digest: Some(d), ..snapshot() });
    }
    rem.status = Some(s);
    rem
}

fn obs() -> Observations {
    Observations {
        now: at(10).0,
        policy: PolicyView::Valid(Settings::default()),
        stages: StageSet::ALL,
        running: None,
        halt: None,
        deploys_at_cap: None,
        ineffective: None,
    }
}

fn status(rem: &mut Remediation) -> &mut RemediationStatus {
    rem.status.as_mut().unwrap()
}

fn record(step: Step, attempt: u32, state: StepState, category: Option<ErrorCategory>, finished: i64) -> StepRecord {
    StepRecord {
        step,
        attempt,
        state,
        category,
        message: category.map(|c| format!("{c} error")),
        started_at: at(finished - 1),
        finished_at: (state != StepState::Started).then(|| at(finished)),
    }
}

/// The step a phase runs first when nothing has been recorded yet.
fn first_step(phase: Phase) -> Option<Step> {
    match phase {
        Phase::Diagnosing => Some(Step::Diagnose),
        Phase::Testing => Some(Step::Test),
        Phase::Deploying => Some(Step::Snapshot),
        Phase::Verifying => Some(Step::Verify),
        Phase::RollingBack => Some(Step::Rollback),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Wait,
    WaitFor,
    To(Phase, &'static str),
    Start(Step, u32),
    Stall(&'static str),
}

fn check(d: &Decision, e: &Expect) -> bool {
    match (d, e) {
        (Decision::Wait { after: None }, Expect::Wait) => true,
        (Decision::Wait { after: Some(_) }, Expect::WaitFor) => true,
        (Decision::Transition { to, reason, .. }, Expect::To(p, want)) => to == p && reason == want,
        (Decision::Start { step, attempt }, Expect::Start(s, a)) => step == s && attempt == a,
        (Decision::Stall { reason, .. }, Expect::Stall(want)) => reason == want,
        _ => false,
    }
}

type Setup = fn(Phase, &mut Remediation, &mut Observations);
type Want = fn(Phase) -> Expect;

/// What the loop does from `phase` with nothing special observed.
fn baseline(p: Phase) -> Expect {
    use Phase::*;
    match p {
        Pending => Expect::To(Diagnosing, r::STARTED),
        Proposed => Expect::To(Testing, r::TESTING),
        AwaitingApproval => Expect::WaitFor,
        Succeeded | Failed | RolledBack | Cancelled | Escalated | Unverified => Expect::Wait,
        _ => Expect::Start(first_step(p).unwrap(), 1),
    }
}

fn pre_deploy(p: Phase) -> bool {
    !p.is_terminal() && !p.after_deploy()
}

/// One row per kind of observation; each maps every phase to the expected decision.
fn table() -> Vec<(&'static str, Setup, Want)> {
    vec![
        ("nothing special", |_, _, _| {}, baseline),
        (
            "a person set spec.cancel",
            |_, rem, _| rem.spec.cancel = true,
            |p| match p {
                _ if p.is_terminal() => Expect::Wait,
                Phase::RollingBack => Expect::Start(Step::Rollback, 1),
                _ => Expect::To(Phase::Cancelled, r::CANCEL_REQUESTED),
            },
        ),
        (
            "the alert resolved",
            |_, rem, _| {
                status(rem).alert = Some(AlertObservation {
                    state: AlertState::Resolved,
                    times_seen: 2,
                    first_seen: at(0),
                    last_seen: at(5),
                    resolved_at: Some(at(5)),
                    refired_at: None,
                    alerts: vec![],
                });
            },
            |p| if pre_deploy(p) { Expect::To(Phase::Cancelled, r::ALERT_RESOLVED) } else { baseline(p) },
        ),
        (
            "the policy was deleted",
            |_, _, o| o.policy = PolicyView::NotFound,
            |p| match p {
                _ if p.is_terminal() => Expect::Wait,
                Phase::RollingBack => Expect::Start(Step::Rollback, 1),
                Phase::Deploying | Phase::Verifying => Expect::To(Phase::Escalated, r::POLICY_NOT_FOUND),
                _ => Expect::To(Phase::Cancelled, r::POLICY_NOT_FOUND),
            },
        ),
        (
            "the policy is invalid",
            |_, _, o| o.policy = PolicyView::Invalid("bad matcher".into()),
            |p| match p {
                _ if p.is_terminal() => Expect::Wait,
                Phase::RollingBack => Expect::Start(Step::Rollback, 1),
                _ => Expect::Stall(r::POLICY_INVALID),
            },
        ),
        (
            "the pre-deploy deadline passed",
            |_, _, o| o.now = at(7200).0,
            |p| match p {
                Phase::Diagnosing | Phase::Proposed | Phase::Testing | Phase::AwaitingApproval => {
                    Expect::To(Phase::Escalated, r::DEADLINE_EXCEEDED)
                }
                _ => baseline(p),
            },
        ),
        (
            "no stage is available in this build",
            |_, _, o| o.stages = StageSet::NONE,
            |p| match baseline(p) {
                Expect::Start(..) => Expect::Stall(r::STAGE_UNAVAILABLE),
                other => other,
            },
        ),
        (
            "the step is running in this process",
            |p, rem, o| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Started, None, 9));
                    o.running = Some((step, 1));
                }
            },
            |p| match baseline(p) {
                Expect::Start(..) => Expect::Wait,
                other => other,
            },
        ),
        (
            "the step was started before a restart",
            |p, rem, _| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 2, StepState::Started, None, 9));
                }
            },
            |p| match baseline(p) {
                Expect::Start(step, _) => Expect::Start(step, 2),
                other => other,
            },
        ),
        (
            "the step just failed transiently",
            |p, rem, _| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Failed, Some(ErrorCategory::Transient), 10));
                }
            },
            |p| match baseline(p) {
                Expect::Start(..) => Expect::WaitFor,
                other => other,
            },
        ),
        (
            "the step failed transiently a while ago",
            |p, rem, o| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Failed, Some(ErrorCategory::Transient), 10));
                    o.now = at(20).0;
                }
            },
            |p| match baseline(p) {
                Expect::Start(step, _) => Expect::Start(step, 2),
                other => other,
            },
        ),
        (
            "the step failed max_attempts times",
            |p, rem, o| {
                if let Some(step) = first_step(p) {
                    for attempt in 1..=3 {
                        status(rem).push_step(record(
                            step,
                            attempt,
                            StepState::Failed,
                            Some(ErrorCategory::Transient),
                            10,
                        ));
                    }
                    o.now = at(1000).0;
                }
            },
            |p| match p {
                Phase::Diagnosing | Phase::Testing | Phase::Deploying => {
                    Expect::To(Phase::Escalated, r::REPEATED_FAILURE)
                }
                Phase::Verifying => Expect::To(Phase::RollingBack, r::VERIFICATION_FAILED),
                Phase::RollingBack => Expect::To(Phase::Escalated, r::ROLLBACK_FAILED),
                _ => baseline(p),
            },
        ),
        (
            "the step was forbidden",
            |p, rem, _| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Failed, Some(ErrorCategory::Forbidden), 10));
                }
            },
            |p| match p {
                Phase::Diagnosing | Phase::Testing | Phase::Deploying => Expect::To(Phase::Failed, r::FORBIDDEN),
                Phase::Verifying => Expect::To(Phase::RollingBack, r::VERIFICATION_FAILED),
                Phase::RollingBack => Expect::To(Phase::Escalated, r::ROLLBACK_FAILED),
                _ => baseline(p),
            },
        ),
        (
            "the step ran out of budget",
            |p, rem, _| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Failed, Some(ErrorCategory::BudgetExhausted), 10));
                }
            },
            |p| match p {
                Phase::Diagnosing | Phase::Testing | Phase::Deploying | Phase::RollingBack => {
                    Expect::To(Phase::Escalated, r::BUDGET_EXHAUSTED)
                }
                Phase::Verifying => Expect::To(Phase::RollingBack, r::BUDGET_EXHAUSTED),
                _ => baseline(p),
            },
        ),
        (
            "the step needs a human (the agent escalated or its patch was refused)",
            |p, rem, _| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Failed, Some(ErrorCategory::NeedsHuman), 10));
                }
            },
            |p| match p {
                Phase::Diagnosing | Phase::Testing | Phase::Deploying | Phase::RollingBack => {
                    Expect::To(Phase::Escalated, r::AGENT_ESCALATED)
                }
                Phase::Verifying => Expect::To(Phase::RollingBack, r::AGENT_ESCALATED),
                _ => baseline(p),
            },
        ),
        (
            "the step was cancelled by a shutdown",
            |p, rem, _| {
                if let Some(step) = first_step(p) {
                    status(rem).push_step(record(step, 1, StepState::Cancelled, None, 10));
                }
            },
            |p| match baseline(p) {
                Expect::Start(step, _) => Expect::Start(step, 2),
                other => other,
            },
        ),
    ]
}

#[test]
fn every_phase_against_every_observation() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for (name, setup, want) in table() {
        for phase in Phase::ALL {
            let mut rem = mk_remediation(phase);
            let mut o = obs();
            setup(phase, &mut rem, &mut o);
            let d = decide(&rem, &o);
            let e = want(phase);
            cases += 1;
            if !check(&d, &e) {
                failures.push(format!("{phase} / {name}: expected {e:?}, got {d:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases wrong:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(cases, table().len() * Phase::ALL.len());
}

#[test]
fn every_decision_is_a_legal_transition_and_terminal_phases_are_final() {
    for (name, setup, _) in table() {
        for phase in Phase::ALL {
            let mut rem = mk_remediation(phase);
            let mut o = obs();
            setup(phase, &mut rem, &mut o);
            match decide(&rem, &o) {
                Decision::Transition { to, message, .. } => {
                    assert!(phase.successors().contains(&to), "{phase} -> {to} is illegal ({name})");
                    assert!(!message.is_empty(), "a transition must say why ({phase}, {name})");
                }
                Decision::Start { .. } | Decision::Stall { .. } => {
                    assert!(!phase.is_terminal(), "{phase} must be final ({name})")
                }
                Decision::Wait { .. } => {}
            }
        }
    }
}

#[test]
fn every_phase_is_reachable_from_pending() {
    let mut seen = vec![Phase::Pending];
    let mut frontier = vec![Phase::Pending];
    while let Some(p) = frontier.pop() {
        for next in p.successors() {
            if !seen.contains(next) {
                seen.push(*next);
                frontier.push(*next);
            }
        }
    }
    for p in Phase::ALL {
        assert!(seen.contains(&p), "{p} is unreachable");
        assert_eq!(p.is_terminal(), p.successors().is_empty(), "{p}: terminal iff no successors");
    }
}

fn run(phase: Phase, edit: impl FnOnce(&mut RemediationStatus)) -> Decision {
    let mut rem = mk_remediation(phase);
    edit(status(&mut rem));
    decide(&rem, &obs())
}

#[test]
fn diagnosing_proposes_after_diagnosis_and_moves_on_with_a_proposal() {
    let d = run(Phase::Diagnosing, |s| {
        s.diagnosis = Some(Diagnosis { summary: "x".into(), findings: vec![] });
        s.push_step(record(Step::Diagnose, 1, StepState::Succeeded, None, 5));
    });
    assert_eq!(d, Decision::Start { step: Step::Propose, attempt: 1 });
    let d = run(Phase::Diagnosing, |s| s.proposal = Some(proposal()));
    assert!(check(&d, &Expect::To(Phase::Proposed, r::PROPOSED)));
}

#[test]
fn an_observe_policy_or_a_job_target_stops_at_the_diagnosis_and_never_proposes() {
    let diagnosed = |s: &mut RemediationStatus| {
        s.diagnosis =
            Some(Diagnosis { summary: "nightly failed 3 times: BackoffLimitExceeded".into(), findings: vec![] });
        s.push_step(record(Step::Diagnose, 1, StepState::Succeeded, None, 5));
    };
    let mut rem = mk_remediation(Phase::Diagnosing);
    diagnosed(status(&mut rem));
    let observe =
        Observations { policy: PolicyView::Valid(Settings { diagnose_only: true, ..Settings::default() }), ..obs() };
    let d = decide(&rem, &observe);
    assert!(check(&d, &Expect::To(Phase::Escalated, r::DIAGNOSED)), "{d:?}");
    let Decision::Transition { message, .. } = d else { unreachable!() };
    assert!(message.contains("BackoffLimitExceeded"), "the findings go to people: {message}");
    // A Remediation made by hand on a Job, under a policy that would deploy: still only diagnosed.
    rem.spec.target = TargetRef { api_version: "batch/v1".into(), kind: TargetKind::Job, name: "nightly".into() };
    let d = decide(&rem, &obs());
    assert!(check(&d, &Expect::To(Phase::Escalated, r::DIAGNOSED)), "{d:?}");
    // Before the diagnosis, observe diagnoses like any policy.
    let fresh = mk_remediation(Phase::Diagnosing);
    assert_eq!(decide(&fresh, &observe), Decision::Start { step: Step::Diagnose, attempt: 1 });
}

#[test]
fn a_playbook_that_does_not_apply_stands_aside_before_anything_is_proposed() {
    let mut rem = mk_remediation(Phase::Diagnosing);
    status(&mut rem).push_step(record(Step::Diagnose, 1, StepState::Failed, Some(ErrorCategory::NotApplicable), 5));
    let d = decide(&rem, &obs());
    assert!(check(&d, &Expect::To(Phase::Cancelled, r::NOT_APPLICABLE)), "{d:?}");
    let Decision::Transition { message, .. } = d else { unreachable!() };
    assert!(message.contains("not_applicable"), "{message}");
}

#[test]
fn testing_follows_ci_then_gate() {
    let digest = proposal().digest;
    let d = run(Phase::Testing, |s| s.ci = Some(ci(CiVerdict::Failed, &digest)));
    assert!(check(&d, &Expect::To(Phase::Failed, r::TESTS_FAILED)));
    let Decision::Transition { message, .. } = d else { unreachable!() };
    assert!(message.contains("field is immutable"), "the API server's message reaches the user: {message}");

    let d = run(Phase::Testing, |s| s.ci = Some(ci(CiVerdict::Passed, "sha256:stale")));
    assert_eq!(d, Decision::Start { step: Step::Test, attempt: 1 }, "a CI result for another patch does not count");

    let d = run(Phase::Testing, |s| s.ci = Some(ci(CiVerdict::Passed, &digest)));
    assert_eq!(d, Decision::Start { step: Step::Gate, attempt: 1 });

    for (decision, expect) in [
        (GateDecision::Approved, Expect::To(Phase::Deploying, r::APPROVED)),
        (GateDecision::ApprovalRequired, Expect::To(Phase::AwaitingApproval, r::APPROVAL_REQUIRED)),
        (GateDecision::Denied, Expect::To(Phase::Escalated, r::HUMANS_ONLY)),
    ] {
        let d = run(Phase::Testing, |s| {
            s.ci = Some(ci(CiVerdict::Passed, &digest));
            s.gate = Some(GateResult { decision, reason: "trust".into(), identity: None });
        });
        assert!(check(&d, &expect), "{decision:?}: {d:?}");
    }
}

#[test]
fn approval_decides_between_deploy_and_cancel() {
    let rec = |decision| ApprovalRecord {
        name: "a1".into(),
        decision,
        approver: "alice".into(),
        reason: Some("looks right".into()),
        decided_at: at(5),
    };
    let d = run(Phase::AwaitingApproval, |s| s.approval = Some(rec(ApprovalDecision::Approve)));
    assert!(check(&d, &Expect::To(Phase::Deploying, r::APPROVED)));
    let d = run(Phase::AwaitingApproval, |s| s.approval = Some(rec(ApprovalDecision::Reject)));
    assert!(check(&d, &Expect::To(Phase::Cancelled, r::APPROVAL_REJECTED)));
}

/// The deploy step's re-check refuses before anything is written: the Remediation escalates
/// to a human with the reason, and nothing is rolled back.
#[test]
fn a_deploy_refused_by_its_recheck_escalates_without_a_rollback() {
    let d = run(Phase::Deploying, |s| {
        s.deploy = Some(snapshot());
        s.push_step(record(Step::Deploy, 1, StepState::Failed, Some(ErrorCategory::NeedsHuman), 9));
    });
    assert!(check(&d, &Expect::To(Phase::Escalated, r::DEPLOY_REFUSED)), "{d:?}");
}

/// A deploy that waits for something outside Reflex (disruption headroom, a freeze begun
/// since the controller looked) is tried again every DEFERRED_RECHECK however often it waited
/// — waiting is not failing — and goes to a human once limits.maxDuration is spent.
#[test]
fn a_deferred_deploy_is_tried_again_without_counting_as_a_failure_until_max_duration() {
    let deferred = |s: &mut RemediationStatus, times: u32, last_at: i64| {
        s.deploy = Some(snapshot());
        for attempt in 1..=times {
            let finished = last_at - i64::from(times - attempt) * 15;
            s.push_step(record(Step::Deploy, attempt, StepState::Failed, Some(ErrorCategory::Deferred), finished));
        }
    };
    // Five waits in a row (more than max_attempts 3): still waiting, then trying again.
    let d = run(Phase::Deploying, |s| deferred(s, 5, 5));
    assert_eq!(d, Decision::Wait { after: Some(DEFERRED_RECHECK - Duration::from_secs(5)) });
    let d = run(Phase::Deploying, |s| deferred(s, 5, -5));
    assert_eq!(d, Decision::Start { step: Step::Deploy, attempt: 6 });
    // A real failure after the waits counts once, not six times.
    let mut rem = mk_remediation(Phase::Deploying);
    deferred(status(&mut rem), 5, -20);
    status(&mut rem).push_step(record(Step::Deploy, 6, StepState::Failed, Some(ErrorCategory::Transient), -5));
    assert_eq!(status(&mut rem).consecutive_failures(Step::Deploy), 1);
    // Past maxDuration from the start: a person decides.
    let mut rem = mk_remediation(Phase::Deploying);
    deferred(status(&mut rem), 2, 3_590);
    let late = Observations { now: at(3_600).0, ..obs() };
    let d = decide(&rem, &late);
    assert!(check(&d, &Expect::To(Phase::Escalated, r::DEADLINE_EXCEEDED)), "{d:?}");
    let Decision::Transition { message, .. } = d else { unreachable!() };
    assert!(message.contains("deferred error"), "the reason it waited is kept: {message}");
}

/// The target changed since CI tested the change: back to Testing, not to a human — unless
/// it changed under every test, max_attempts + 1 of them.
#[test]
fn a_target_changed_since_ci_is_tested_again_and_one_that_keeps_changing_goes_to_a_human() {
    let conflict = |s: &mut RemediationStatus, retests: u32| {
        s.deploy = Some(snapshot());
        s.retests = retests;
        s.push_step(record(Step::Deploy, retests + 1, StepState::Failed, Some(ErrorCategory::Conflict), 9));
    };
    let d = run(Phase::Deploying, |s| conflict(s, 0));
    assert!(check(&d, &Expect::To(Phase::Testing, r::TARGET_CHANGED)), "{d:?}");
    let d = run(Phase::Deploying, |s| conflict(s, 2));
    assert!(check(&d, &Expect::To(Phase::Testing, r::TARGET_CHANGED)), "{d:?}");
    let d = run(Phase::Deploying, |s| conflict(s, 3));
    assert!(check(&d, &Expect::To(Phase::Escalated, r::TARGET_CHANGED)), "{d:?}");
}

/// The step log is bounded, but what the loop decides by — the latest record of each step —
/// is never dropped: an hour of deferred deploys keeps when the gate decided (the approval
/// deadline runs from it).
#[test]
fn a_long_run_of_retries_never_pushes_out_the_latest_record_of_another_step() {
    let mut s = mk_remediation(Phase::Deploying).status.unwrap();
    s.push_step(record(Step::Gate, 1, StepState::Succeeded, None, 5));
    for attempt in 1..=200 {
        s.push_step(record(
            Step::Deploy,
            attempt,
            StepState::Failed,
            Some(ErrorCategory::Deferred),
            10 + i64::from(attempt),
        ));
    }
    assert_eq!(s.steps.len(), MAX_STEPS);
    assert_eq!(s.waiting_since(), Some(at(5).0));
    assert_eq!(s.last_step(Step::Deploy).map(|r| r.attempt), Some(200));
}

#[test]
fn deploy_needs_a_snapshot_first_and_a_tested_patch_always() {
    let d = run(Phase::Deploying, |s| s.deploy = Some(snapshot()));
    assert_eq!(d, Decision::Start { step: Step::Deploy, attempt: 1 });
    let digest = proposal().digest;
    let d =
        run(Phase::Deploying, |s| s.deploy = Some(DeployRecord { applied_digest: Some(digest.clone()), ..snapshot() }));
    assert_eq!(d, Decision::Start { step: Step::Rollout, attempt: 1 }, "applied: watch it roll out");
    let d = run(Phase::Deploying, |s| {
        s.deploy = Some(snapshot());
        s.push_step(record(Step::Deploy, 1, StepState::Failed, Some(ErrorCategory::InvalidSpec), 9));
    });
    assert!(
        check(&d, &Expect::To(Phase::RollingBack, r::DEPLOY_FAILED)),
        "a failed apply after a snapshot reverts: {d:?}"
    );
    let d = run(Phase::Deploying, |s| s.ci = Some(ci(CiVerdict::Failed, &digest)));
    assert!(check(&d, &Expect::To(Phase::Escalated, r::INVALID_SPEC)), "an untested patch never deploys: {d:?}");
    let d = run(Phase::Deploying, |s| {
        if let Some(p) = s.proposal.as_mut() {
            p.patch = AnyJson(serde_json::json!({"spec": {"replicas": 100}}));
        }
    });
    assert!(check(&d, &Expect::To(Phase::Escalated, r::INVALID_SPEC)), "a patch edited after CI never deploys: {d:?}");
}

#[test]
fn verification_verdicts_close_or_revert() {
    let v = |verdict, next: Option<i64>| Verification {
        verdict,
        samples: vec![],
        message: None,
        started_at: at(0),
        next_sample_at: next.map(at),
        action: None,
        query: None,
        guards: Vec::new(),
        reproduced: false,
        condition: None,
        threshold: None,
    };
    let d = run(Phase::Verifying, |s| s.verification = Some(v(VerificationVerdict::Passed, None)));
    assert!(check(&d, &Expect::To(Phase::Succeeded, r::VERIFIED)));
    let d = run(Phase::Verifying, |s| s.verification = Some(v(VerificationVerdict::Failed, None)));
    assert!(check(&d, &Expect::To(Phase::RollingBack, r::VERIFICATION_FAILED)));
    let d = run(Phase::Verifying, |s| s.verification = Some(v(VerificationVerdict::Pending, Some(25))));
    assert_eq!(d, Decision::Wait { after: Some(Duration::from_secs(15)) });
    let d = run(Phase::Verifying, |s| {
        s.verification = Some(v(VerificationVerdict::Pending, Some(5)));
        s.push_step(record(Step::Verify, 4, StepState::Succeeded, None, 4));
    });
    assert_eq!(d, Decision::Start { step: Step::Verify, attempt: 5 }, "each sample is its own effect");
}

/// An applied change is deployed once it has rolled out: looked at again while it
/// progresses, verified once complete, rolled back when it stalls.
#[test]
fn an_applied_change_waits_for_its_rollout_and_a_stalled_one_is_rolled_back() {
    let digest = proposal().digest;
    let rollout = |state, next: Option<i64>| RolloutStatus {
        state,
        message: "2 of 3 updated".into(),
        completed_at: (state == RolloutState::Complete).then(|| at(9)),
        next_check_at: next.map(at),
    };
    let applied = |s: &mut RemediationStatus, r: Option<RolloutStatus>, looks: u32| {
        s.deploy = Some(DeployRecord { applied_digest: Some(digest.clone()), applied_at: Some(at(1)), ..snapshot() });
        for attempt in 1..=looks {
            s.push_step(record(Step::Rollout, attempt, StepState::Succeeded, None, i64::from(attempt) + 1));
        }
        s.rollout = r;
    };
    let d = run(Phase::Deploying, |s| applied(s, Some(rollout(RolloutState::Progressing, Some(12))), 1));
    assert_eq!(d, Decision::Wait { after: Some(Duration::from_secs(2)) });
    let d = run(Phase::Deploying, |s| applied(s, Some(rollout(RolloutState::Progressing, Some(8))), 3));
    assert_eq!(d, Decision::Start { step: Step::Rollout, attempt: 4 }, "each look is its own effect");
    let d = run(Phase::Deploying, |s| applied(s, Some(rollout(RolloutState::Complete, None)), 4));
    assert!(check(&d, &Expect::To(Phase::Verifying, r::DEPLOYED)), "{d:?}");
    let d = run(Phase::Deploying, |s| applied(s, Some(rollout(RolloutState::Stalled, None)), 4));
    assert!(check(&d, &Expect::To(Phase::RollingBack, r::ROLLOUT_STALLED)), "{d:?}");
    // Halts (a kill switch, a freeze) stop nothing once the change is applied.
    let mut rem = mk_remediation(Phase::Deploying);
    applied(status(&mut rem), Some(rollout(RolloutState::Progressing, Some(8))), 1);
    let halted = Observations {
        halt: Some(Halt { reason: r::KILL_SWITCH, message: "off".into(), recheck_after: None }),
        ..obs()
    };
    assert_eq!(decide(&rem, &halted), Decision::Start { step: Step::Rollout, attempt: 2 });
}

/// A policy that stopped trying on the target escalates a Remediation that has not
/// started, and leaves one under way alone.
#[test]
fn a_target_the_policy_stopped_trying_on_escalates_before_anything_starts() {
    let paused = Observations { ineffective: Some("the last 2 fixes by playbook raise failed".into()), ..obs() };
    let rem = mk_remediation(Phase::Pending);
    let d = decide(&rem, &paused);
    assert!(check(&d, &Expect::To(Phase::Escalated, r::INEFFECTIVE_FIX)), "{d:?}");
    let under_way = mk_remediation(Phase::Diagnosing);
    assert_eq!(decide(&under_way, &paused), Decision::Start { step: Step::Diagnose, attempt: 1 });
}

/// Inconclusive and Error never count as a pass: each leads where the rule says — people
/// (the default), a rollback, or an Unverified end that keeps the change.
#[test]
fn an_undecided_verification_goes_where_the_policy_says_never_to_succeeded() {
    use crate::api::policy::VerdictAction;
    for (verdict, want_reason) in [
        (VerificationVerdict::Inconclusive, r::VERIFICATION_INCONCLUSIVE),
        (VerificationVerdict::Error, r::VERIFICATION_ERROR),
    ] {
        for (action, phase) in [
            (None, Phase::Escalated),
            (Some(VerdictAction::Escalate), Phase::Escalated),
            (Some(VerdictAction::Rollback), Phase::RollingBack),
            (Some(VerdictAction::Keep), Phase::Unverified),
        ] {
            let d = run(Phase::Verifying, |s| {
                s.verification = Some(Verification {
                    verdict,
                    samples: vec![],
                    message: Some("no data".into()),
                    started_at: at(0),
                    next_sample_at: None,
                    action,
                    query: None,
                    guards: Vec::new(),
                    reproduced: false,
                    condition: None,
                    threshold: None,
                });
            });
            assert!(check(&d, &Expect::To(phase, want_reason)), "{verdict:?} {action:?}: {d:?}");
        }
    }
}

#[test]
fn a_completed_effect_is_never_repeated() {
    // Diagnose succeeded but its result vanished (status edited by hand): escalate, never re-run.
    let d = run(Phase::Diagnosing, |s| s.push_step(record(Step::Diagnose, 1, StepState::Succeeded, None, 5)));
    assert!(check(&d, &Expect::To(Phase::Escalated, r::REPEATED_FAILURE)), "{d:?}");
    let d = run(Phase::RollingBack, |s| {
        s.rollback =
            Some(RollbackRecord { reason: "x".into(), restored_revision: None, restored_at: at(5), pull_request: None })
    });
    assert!(check(&d, &Expect::To(Phase::RolledBack, r::ROLLED_BACK)));
    let d = run(Phase::RollingBack, |s| s.deploy = None);
    assert!(check(&d, &Expect::To(Phase::Escalated, r::ROLLBACK_FAILED)));
}

#[test]
fn backoff_grows_is_capped_and_jittered_deterministically() {
    let s = Settings::default();
    let a1 = backoff(&s, "u", Step::Test, 1);
    let a3 = backoff(&s, "u", Step::Test, 3);
    assert!((Duration::from_millis(1600)..=Duration::from_millis(2400)).contains(&a1), "{a1:?}");
    assert!((Duration::from_millis(6400)..=Duration::from_millis(9600)).contains(&a3), "{a3:?}");
    assert!(backoff(&s, "u", Step::Test, 40) <= Duration::from_secs(360));
    assert_eq!(backoff(&s, "u", Step::Test, 2), backoff(&s, "u", Step::Test, 2));
    let spread: std::collections::HashSet<_> =
        (0..20).map(|i| backoff(&s, &format!("uid-{i}"), Step::Test, 2)).collect();
    assert!(spread.len() > 5, "jitter must spread retries of different remediations");
}

/// Kill switch, suspend and the policy's target kind hold before deploy whatever created the
/// Remediation; a change already applied is still verified (and rolled back if it must be).
#[test]
fn a_halt_stalls_everything_before_deploy_and_nothing_after_it() {
    let halt = Halt { reason: r::SUSPENDED, message: "policy \"p\" is suspended".into(), recheck_after: None };
    let halted = |phase: Phase, edit: &dyn Fn(&mut RemediationStatus)| {
        let mut rem = mk_remediation(phase);
        edit(status(&mut rem));
        decide(&rem, &Observations { halt: Some(halt.clone()), ..obs() })
    };
    for phase in [Phase::Pending, Phase::Diagnosing, Phase::Proposed, Phase::Testing, Phase::AwaitingApproval] {
        let d = halted(phase, &|_| {});
        assert!(matches!(&d, Decision::Stall { reason, .. } if *reason == r::SUSPENDED), "{phase}: {d:?}");
    }
    let d = halted(Phase::Deploying, &|s| s.deploy = Some(snapshot()));
    assert!(matches!(d, Decision::Stall { .. }), "not applied yet: {d:?}");
    let d = halted(Phase::Verifying, &|_| {});
    assert!(!matches!(d, Decision::Stall { .. }), "verification goes on: {d:?}");
}

#[test]
fn halts_come_from_the_kill_switch_a_suspended_policy_or_a_kind_the_policy_does_not_act_on() {
    let spec: crate::api::RemediationPolicySpec = serde_json::from_value(serde_json::json!({
        "match": {"alertnames": ["A"]}, "target": {"kind": "Deployment", "name": "x"}, "playbook": "p",
        "trust": {"level": "auto"}}))
    .unwrap();
    let mut policy = crate::api::validate::ValidPolicy::from_spec(&spec).unwrap();
    let rem = mk_remediation(Phase::Pending);
    assert_eq!(halt_for(false, Some(&policy), &rem, at(0).0), None);
    assert_eq!(halt_for(true, Some(&policy), &rem, at(0).0).map(|h| h.reason), Some(r::KILL_SWITCH));
    assert_eq!(halt_for(true, None, &rem, at(0).0).map(|h| h.reason), Some(r::KILL_SWITCH), "with no valid policy too");
    policy.limits.suspend = true;
    assert_eq!(halt_for(false, Some(&policy), &rem, at(0).0).map(|h| h.reason), Some(r::SUSPENDED));
    policy.limits.suspend = false;
    policy.target_kinds = vec![crate::api::TargetKind::ConfigMap];
    let h = halt_for(false, Some(&policy), &rem, at(0).0).unwrap();
    assert_eq!(h.reason, r::TARGET_KIND_NOT_ALLOWED);
    assert!(h.message.contains("acts on ConfigMap, not on Deployment"), "{}", h.message);
}

/// A change waits for approval only as long as the policy says; then it escalates.
#[test]
fn an_approval_that_never_comes_expires_into_escalated() {
    let mut rem = mk_remediation(Phase::AwaitingApproval);
    status(&mut rem).push_step(record(Step::Gate, 1, StepState::Succeeded, None, 2));
    let settings = Settings { approval_timeout: Some(Duration::from_secs(5)), ..Settings::default() };
    let waiting = |now: i64| Observations { now: at(now).0, policy: PolicyView::Valid(settings.clone()), ..obs() };
    assert!(matches!(decide(&rem, &waiting(4)), Decision::Wait { after: Some(_) }), "still within the timeout");
    let d = decide(&rem, &waiting(8));
    assert!(check(&d, &Expect::To(Phase::Escalated, r::APPROVAL_EXPIRED)), "{d:?}");
}

#[test]
fn an_open_change_freeze_halts_before_deploy_and_says_when() {
    let spec: crate::api::RemediationPolicySpec = serde_json::from_value(serde_json::json!({
        "match": {"alertnames": ["A"]}, "target": {"kind": "Deployment", "name": "x"}, "playbook": "p",
        "limits": {"freeze": [{"start": "2023-11-14T00:00", "end": "2023-11-16T00:00", "reason": "release week"}]}}))
    .unwrap();
    let policy = crate::api::validate::ValidPolicy::from_spec(&spec).unwrap();
    let rem = mk_remediation(Phase::Pending);
    let h = halt_for(false, Some(&policy), &rem, at(10).0).unwrap();
    assert_eq!(h.reason, r::CHANGE_FREEZE);
    assert!(h.message.contains("release week") && h.recheck_after.is_some(), "{h:?}");
    let later: Timestamp = "2023-11-17T00:00:00Z".parse().unwrap();
    assert_eq!(halt_for(false, Some(&policy), &rem, later), None, "after the freeze");
}

/// At the operator's deploy cap a new deploy waits (with the reason); one already under way
/// goes on.
#[test]
fn at_the_deploy_cap_a_new_deploy_waits_and_one_under_way_goes_on() {
    let capped = |edit: &dyn Fn(&mut RemediationStatus)| {
        let mut rem = mk_remediation(Phase::Deploying);
        edit(status(&mut rem));
        decide(&rem, &Observations { deploys_at_cap: Some(2), ..obs() })
    };
    let d = capped(&|_| {});
    assert!(
        matches!(&d, Decision::Stall { reason, message } if *reason == r::CONCURRENCY_CAP && message.contains("2 changes")),
        "{d:?}"
    );
    let d = capped(&|s| s.deploy = Some(snapshot()));
    assert_eq!(d, Decision::Start { step: Step::Deploy, attempt: 1 }, "the snapshot is taken: it is this one's turn");
}

/// A person's rejection stops the change before deploy even where no approval was needed.
#[test]
fn a_rejection_cancels_before_deploy_whatever_the_gate_said() {
    let rejected = ApprovalRecord {
        name: "no".into(),
        decision: ApprovalDecision::Reject,
        approver: "bob".into(),
        reason: Some("not during the sale".into()),
        decided_at: at(5),
    };
    for phase in [Phase::Diagnosing, Phase::Testing, Phase::Deploying] {
        let d = run(phase, |s| s.approval = Some(rejected.clone()));
        assert!(check(&d, &Expect::To(Phase::Cancelled, r::APPROVAL_REJECTED)), "{phase}: {d:?}");
    }
    let d = run(Phase::Verifying, |s| s.approval = Some(rejected.clone()));
    assert!(!matches!(d, Decision::Transition { to: Phase::Cancelled, .. }), "after deploy it is verified: {d:?}");
}
