//! The reconciler: observe → decide → act → record, for one Remediation at a time.
//!
//! Contract: [`plan`] is pure — it records a finished effect and an approval into status,
//! asks [`decide`] (chaining transitions), and sets conditions. [`reconcile`] is the thin
//! shell. It touches the cluster in exactly three ways: the finalizer, one server-side
//! apply of status (field manager `reflex-status`, guarded by resourceVersion so a stale
//! view can never overwrite a newer one), and an Event per phase transition. Effects run
//! through [`Stages`] only after their start is recorded.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{self, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::machine::{Decision, Observations, PolicyView, Settings, decide};
use super::runs::Runs;
use super::stages::{EffectKey, StageError, StageInput, StageOutput, Stages};
use crate::api::conditions::{self, ConditionType, Desired, reason};
use crate::api::remediation::{ApprovalRecord, MAX_SAMPLES, Phase, RemediationStatus, Step, StepRecord, StepState};
use crate::api::validate::ValidPolicy;
use crate::api::{
    ApprovalDecision, ErrorCategory, FINALIZER, Remediation, RemediationApproval, RemediationPolicy, STATUS_MANAGER,
};

/// A source of time that tests can fix.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Errors of the reconciler itself (stage failures are recorded in status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a namespace or uid (never the case for objects from the API).
    #[error("remediation {name:?} has no {missing}")]
    MissingMetadata {
        /// Object name.
        name: String,
        /// Which field.
        missing: &'static str,
    },
    /// Writing status failed.
    #[error("writing status of remediation {namespace}/{name}: {source}")]
    WriteStatus {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Remediation CRD is not installed.
    #[error("the Remediation CRD is not installed ({source}); install the CRDs first: kubectl apply -f crds/")]
    CrdMissing {
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The error's category, for metrics and retries.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::MissingMetadata { .. } => ErrorCategory::InvalidSpec,
            Self::WriteStatus { source, .. } | Self::CrdMissing { source } => api_category(source),
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.category(),
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => api_category(e),
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => ErrorCategory::InvalidSpec,
            },
        }
    }
}

/// Maps a Kubernetes API error to a category.
pub fn api_category(e: &kube::Error) -> ErrorCategory {
    match e {
        kube::Error::Api(status) => match status.code {
            401 | 403 => ErrorCategory::Forbidden,
            404 => ErrorCategory::NotFound,
            400 | 422 => ErrorCategory::InvalidSpec,
            _ => ErrorCategory::Transient,
        },
        _ => ErrorCategory::Transient,
    }
}

/// Shared state of the controller.
pub struct Context {
    /// API client (the operator's own identity; only status and Events are written with it).
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Stage implementations.
    pub stages: Stages,
    /// In-flight effects.
    pub runs: Runs,
    /// Policies, kept current by a reflector.
    pub policies: Store<RemediationPolicy>,
    /// Approvals, kept current by a reflector.
    pub approvals: Store<RemediationApproval>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
}

/// A phase change made in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct TransitionRecord {
    /// Old phase.
    pub from: Phase,
    /// New phase.
    pub to: Phase,
    /// Reason constant.
    pub reason: &'static str,
    /// Detail.
    pub message: String,
}

/// Everything one reconcile will do, computed without touching the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write (written only if it differs from the current one).
    pub status: RemediationStatus,
    /// Phase changes, each announced by an Event.
    pub transitions: Vec<TransitionRecord>,
    /// The effect to start once the status is written.
    pub run: Option<(Step, u32)>,
    /// When to look again.
    pub requeue: Option<Duration>,
    /// Stop the in-flight effect (the run reached a terminal phase).
    pub cancel_running: bool,
}

/// Most transitions chained in one reconcile (the longest legal chain is shorter).
const MAX_CHAIN: usize = 16;

fn record_outcome(
    status: &mut RemediationStatus,
    key: &EffectKey,
    outcome: Result<StageOutput, StageError>,
    now: Timestamp,
) {
    let Some(record) = status
        .steps
        .iter_mut()
        .rev()
        .find(|r| r.step == key.step && r.attempt == key.attempt && r.state == StepState::Started)
    else {
        // Not the effect status says is in flight (stale result): ignore it.
        return;
    };
    record.finished_at = Some(Time(now));
    match outcome {
        Ok(output) => {
            record.state = StepState::Succeeded;
            match output {
                StageOutput::Diagnosis(d) => status.diagnosis = Some(d),
                StageOutput::Proposal(p) => status.proposal = Some(p),
                StageOutput::Ci(c) => status.ci = Some(c),
                StageOutput::Gate(g) => status.gate = Some(g),
                StageOutput::Deploy(d) => status.deploy = Some(d),
                StageOutput::Verification(mut v) => {
                    let excess = v.samples.len().saturating_sub(MAX_SAMPLES);
                    v.samples.drain(..excess);
                    status.verification = Some(v);
                }
                StageOutput::Rollback(r) => status.rollback = Some(r),
            }
        }
        Err(e) => {
            record.state = StepState::Failed;
            record.category = Some(e.category);
            record.message = Some(e.message);
        }
    }
}

/// W3C trace id (32 lowercase hex digits) derived from the Remediation's uid.
pub fn trace_id(uid: &str) -> Option<String> {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_lowercase()).collect();
    (hex.len() == 32 && hex.chars().any(|c| c != '0')).then_some(hex)
}

/// Computes what one reconcile does. Pure.
pub fn plan(
    rem: &Remediation,
    finished: Option<(EffectKey, Result<StageOutput, StageError>)>,
    approval: Option<ApprovalRecord>,
    obs: &Observations,
) -> Plan {
    let now = obs.now;
    let mut work = rem.clone();
    let mut status = work.status.take().unwrap_or_default();
    if let Some((key, outcome)) = finished {
        record_outcome(&mut status, &key, outcome, now);
    }
    if status.phase == Phase::AwaitingApproval && status.approval.is_none() {
        status.approval = approval;
    }
    work.status = Some(status);

    let mut transitions = Vec::new();
    let mut run = None;
    let mut requeue = None;
    let mut stall = None;
    for _ in 0..MAX_CHAIN {
        let decision = decide(&work, obs);
        let Some(status) = work.status.as_mut() else { break };
        match decision {
            Decision::Transition { to, reason, message } => {
                let from = status.phase;
                if !from.successors().contains(&to) {
                    // decide() never does this (tested exhaustively); refuse rather than corrupt.
                    stall = Some((reason::INVALID_SPEC, format!("refused illegal transition {from} -> {to}")));
                    break;
                }
                status.phase = to;
                if from == Phase::Pending {
                    status.started_at = Some(Time(now));
                    status.trace_id = rem.metadata.uid.as_deref().and_then(trace_id);
                }
                if to.is_terminal() {
                    status.finished_at = Some(Time(now));
                }
                transitions.push(TransitionRecord { from, to, reason, message });
            }
            Decision::Run { step, attempt } => {
                let resuming =
                    status.last_step(step).is_some_and(|r| r.attempt == attempt && r.state == StepState::Started);
                if !resuming {
                    status.push_step(StepRecord {
                        step,
                        attempt,
                        state: StepState::Started,
                        category: None,
                        message: None,
                        started_at: Time(now),
                        finished_at: None,
                    });
                }
                run = Some((step, attempt));
                break;
            }
            Decision::Wait { after } => {
                requeue = after;
                break;
            }
            Decision::Stall { reason, message } => {
                stall = Some((reason, message));
                break;
            }
        }
    }

    let mut status = work.status.take().unwrap_or_default();
    let phase = status.phase;
    let generation = rem.metadata.generation;
    let last_reason = transitions.last().map(|t| t.reason);
    let previous_ready = conditions::find(&status.conditions, ConditionType::Ready).map(|c| c.reason.clone());
    let terminal_reason: &'static str = last_reason.unwrap_or(match previous_ready.as_deref() {
        Some(r) if r == reason::VERIFIED => reason::VERIFIED,
        _ => reason::FINISHED,
    });
    let message = match (&stall, transitions.last()) {
        (Some((_, m)), _) => Some(m.clone()),
        (None, Some(t)) => Some(t.message.clone()),
        (None, None) => status.message.clone(),
    };
    let progress_message = message.clone().unwrap_or_else(|| format!("phase {phase}"));
    let desired = [
        if phase == Phase::Succeeded {
            Desired::yes(ConditionType::Ready, reason::VERIFIED, progress_message.clone())
        } else if phase.is_terminal() {
            Desired::no(ConditionType::Ready, terminal_reason, progress_message.clone())
        } else {
            Desired::no(ConditionType::Ready, reason::IN_PROGRESS, format!("phase {phase}"))
        },
        match &stall {
            Some((r, m)) => Desired::yes(ConditionType::Stalled, r, m.clone()),
            None => Desired::no(ConditionType::Stalled, reason::IN_PROGRESS, "not stalled"),
        },
        if phase.is_terminal() {
            Desired::no(ConditionType::Progressing, reason::FINISHED, format!("finished in phase {phase}"))
        } else if let Some((r, m)) = &stall {
            Desired::no(ConditionType::Progressing, r, m.clone())
        } else {
            Desired::yes(ConditionType::Progressing, last_reason.unwrap_or(reason::IN_PROGRESS), progress_message)
        },
    ];
    for d in &desired {
        conditions::merge(&mut status.conditions, d, generation, now);
    }
    status.message = message;
    status.observed_generation = generation;

    Plan { status, transitions, run, requeue, cancel_running: phase.is_terminal() }
}

fn settings(policy: &ValidPolicy) -> Settings {
    Settings {
        max_attempts: policy.limits.max_attempts,
        max_duration: policy.limits.max_duration,
        ..Settings::default()
    }
}

fn observe_policy(ctx: &Context, namespace: &str, name: &str) -> (PolicyView, Option<Arc<ValidPolicy>>) {
    match ctx.policies.get(&ObjectRef::new(name).within(namespace)) {
        None => (PolicyView::NotFound, None),
        Some(policy) => match ValidPolicy::from_spec(&policy.spec) {
            Ok(valid) => (PolicyView::Valid(settings(&valid)), Some(Arc::new(valid))),
            Err(errors) => (PolicyView::Invalid(errors.to_string()), None),
        },
    }
}

/// The decision that applies to `rem`: approvals created after it, for it; a rejection
/// wins over any approval.
fn observe_approval(ctx: &Context, rem: &Remediation, now: Timestamp) -> Option<ApprovalRecord> {
    let namespace = rem.namespace()?;
    let created = rem.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut candidates: Vec<_> = ctx
        .approvals
        .state()
        .into_iter()
        .filter(|a| {
            a.namespace().as_deref() == Some(namespace.as_str()) && a.spec.remediation_ref.name == rem.name_any()
        })
        .filter(|a| match (created, a.metadata.creation_timestamp.as_ref()) {
            (Some(rem_created), Some(a_created)) => a_created.0 >= rem_created,
            _ => true,
        })
        .collect();
    candidates.sort_by_key(|a| a.spec.decision != ApprovalDecision::Reject);
    candidates.first().map(|a| ApprovalRecord {
        name: a.name_any(),
        decision: a.spec.decision,
        approver: a.spec.approver.clone(),
        reason: a.spec.reason.clone(),
        decided_at: Time(now),
    })
}

async fn write_status(
    api: &Api<Remediation>,
    rem: &Remediation,
    status: &RemediationStatus,
) -> Result<(), kube::Error> {
    // resourceVersion makes the apply conditional: a reconcile working from a stale cache
    // gets 409 and retries instead of overwriting newer status.
    let body = serde_json::json!({
        "apiVersion": "reflex.dev/v1alpha1",
        "kind": "Remediation",
        "metadata": { "name": rem.name_any(), "resourceVersion": rem.resource_version() },
        "status": status,
    });
    api.patch_status(&rem.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(())
}

async fn apply(rem: Arc<Remediation>, ctx: &Context) -> Result<Action, Error> {
    let name = rem.name_any();
    let namespace =
        rem.namespace().ok_or_else(|| Error::MissingMetadata { name: name.clone(), missing: "namespace" })?;
    let uid = rem.uid().ok_or_else(|| Error::MissingMetadata { name: name.clone(), missing: "uid" })?;
    let api: Api<Remediation> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe.
    let now = ctx.clock.now();
    let (policy_view, policy) = observe_policy(ctx, &namespace, &rem.spec.policy_ref.name);
    let (running, finished) = ctx.runs.state(&uid);
    let finished_key = finished.as_ref().map(|(k, _)| k.clone());
    let obs = Observations {
        now,
        policy: policy_view,
        stages: ctx.stages.available(),
        running: running.map(|k| (k.step, k.attempt)),
    };

    // Decide.
    let plan = plan(&rem, finished, observe_approval(ctx, &rem, now), &obs);

    // Act and record.
    if rem.status.as_ref() != Some(&plan.status) {
        write_status(&api, &rem, &plan.status).await.map_err(|source| Error::WriteStatus {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    } else if plan.run.is_some() {
        // Resuming an effect recorded as started but running nowhere here (after a restart)
        // writes nothing, so no resourceVersion guard protects it. Make sure the cache is not
        // just behind our own last write (which may already hold this effect's result)
        // before starting it again: a consistent read must show the same version.
        let fresh = api.get(&name).await.map_err(|source| Error::WriteStatus {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
        if fresh.resource_version() != rem.resource_version() {
            debug!(remediation = %name, "cache is behind the API server; not resuming the effect yet");
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
    }
    if let Some(key) = finished_key {
        ctx.runs.clear_finished(&key);
    }
    // Only once the terminal status is stored: cancelling earlier would also drop a finished
    // result that a failed write has not recorded yet, and the effect would run again.
    if plan.cancel_running && ctx.runs.cancel(&uid) {
        info!(remediation = %name, "cancelled the in-flight effect");
    }
    let reference = rem.object_ref(&());
    for t in &plan.transitions {
        info!(remediation = %name, from = %t.from, to = %t.to, reason = t.reason, "{}", t.message);
        let event = Event {
            type_: if matches!(t.to, Phase::Failed | Phase::Escalated | Phase::RolledBack | Phase::RollingBack) {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.to_owned(),
            note: Some(truncate(&format!("{} -> {}: {}", t.from, t.to, t.message), 1000)),
            action: "Transition".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            // An Event is a notification, not state: losing one must not block the loop.
            warn!(remediation = %name, error = %e, "could not publish event");
        }
    }
    // Rollback needs no policy (the snapshot is in status); decide() runs nothing else
    // without a valid policy.
    if let Some((step, attempt)) = plan.run.filter(|(step, _)| policy.is_some() || *step == Step::Rollback) {
        let key = EffectKey { uid: uid.clone(), step, attempt };
        let mut current = (*rem).clone();
        current.status = Some(plan.status.clone());
        let cancel = CancellationToken::new();
        let input = StageInput { remediation: Arc::new(current), policy, key: key.clone(), cancel: cancel.clone() };
        if let Some(effect) = ctx.stages.start(input) {
            info!(remediation = %name, effect = %key, "starting effect");
            ctx.runs.spawn(key, ObjectRef::from_obj(&*rem), cancel, effect);
        }
    }
    let stalled = conditions::find(&plan.status.conditions, ConditionType::Stalled).is_some_and(|c| c.status == "True");
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after.max(Duration::from_millis(100))),
        None if plan.status.phase.is_terminal() || stalled || plan.run.is_some() => Action::await_change(),
        // Level-triggered safety net: look again even if no event arrives.
        None => Action::requeue(Duration::from_secs(300)),
    })
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

async fn cleanup(rem: Arc<Remediation>, ctx: &Context) -> Result<Action, Error> {
    if let Some(uid) = rem.uid()
        && ctx.runs.cancel(&uid)
    {
        info!(remediation = %rem.name_any(), "deleted: cancelled the in-flight effect");
    }
    Ok(Action::await_change())
}

/// Reconciles one Remediation (the Controller's callback).
///
/// # Errors
/// Finalizer and status-write failures; stage failures are recorded in status instead.
pub async fn reconcile(rem: Arc<Remediation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace =
        rem.namespace().ok_or_else(|| Error::MissingMetadata { name: rem.name_any(), missing: "namespace" })?;
    let api: Api<Remediation> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, rem, |event| async {
        match event {
            finalizer::Event::Apply(rem) => apply(rem, &ctx).await,
            finalizer::Event::Cleanup(rem) => cleanup(rem, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retry by error category: transient → soon; forbidden → slowly, surfaced in logs;
/// invalid input → wait for a change.
pub fn error_policy(rem: Arc<Remediation>, error: &Error, _ctx: Arc<Context>) -> Action {
    let category = error.category();
    warn!(remediation = %rem.name_any(), category = %category, error = %error, "reconcile failed");
    match category {
        ErrorCategory::Transient => {
            let settings = Settings::default();
            Action::requeue(super::machine::backoff(&settings, rem.uid().as_deref().unwrap_or(""), Step::Diagnose, 1))
        }
        ErrorCategory::Forbidden | ErrorCategory::NotFound => Action::requeue(Duration::from_secs(300)),
        ErrorCategory::InvalidSpec | ErrorCategory::BudgetExhausted | ErrorCategory::NeedsHuman => {
            Action::await_change()
        }
    }
}

/// A store kept current by a watch, and the future that feeds it (run it to keep the
/// store current; it reconnects with backoff on watch errors).
fn mirror<K>(api: Api<K>) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let feed = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    (store, feed)
}

/// Runs the Remediation controller until `shutdown` completes.
///
/// # Errors
/// [`Error::CrdMissing`] when the CRDs are not installed.
pub async fn run(
    client: Client,
    stages: Stages,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let remediations: Api<Remediation> = Api::all(client.clone());
    remediations.list(&ListParams::default().limit(1)).await.map_err(|source| Error::CrdMissing { source })?;

    let (policies, policy_feed) = mirror(Api::<RemediationPolicy>::all(client.clone()));
    let (approvals, approval_feed) = mirror(Api::<RemediationApproval>::all(client.clone()));
    let feeds = tokio::spawn(async move { futures::join!(policy_feed, approval_feed) });
    let (Ok(()), Ok(())) = futures::join!(policies.wait_until_ready(), approvals.wait_until_ready()) else {
        feeds.abort();
        return Ok(());
    };

    let (requeue_tx, requeue_rx) = futures::channel::mpsc::unbounded();
    let runs = Runs::new(requeue_tx);
    let reporter = Reporter { controller: "reflex".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        stages,
        runs: runs.clone(),
        policies,
        approvals,
        clock: Arc::new(SystemClock),
    });

    let controller = Controller::new(remediations, watcher::Config::default());
    let index = controller.store();
    controller
        .watches(Api::<RemediationPolicy>::all(client.clone()), watcher::Config::default(), move |policy| {
            let namespace = policy.namespace();
            index
                .state()
                .into_iter()
                .filter(|r| r.namespace() == namespace && r.spec.policy_ref.name == policy.name_any())
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        })
        .watches(Api::<RemediationApproval>::all(client), watcher::Config::default(), |approval| {
            let namespace = approval.namespace().unwrap_or_default();
            Some(ObjectRef::<Remediation>::new(&approval.spec.remediation_ref.name).within(&namespace))
        })
        .reconcile_on(requeue_rx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                warn!(error = %e, "controller");
            }
            futures::future::ready(())
        })
        .await;
    runs.cancel_all();
    feeds.abort();
    Ok(())
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
