//! The reconciler: the effectful shell around [`plan`](super::plan::plan), for one
//! Remediation at a time — observe → decide → act → record.
//!
//! Contract: [`run`] starts the kube-runtime controller (with watches on policies and
//! approvals); [`reconcile`] is its callback. A reconcile touches the cluster in exactly
//! three ways: the finalizer, one server-side apply of status (field manager
//! `reflex-status`, guarded by resourceVersion so a stale view can never overwrite a newer
//! one), and an Event per phase transition. Effects start through the stage registry
//! ([`Stages`]) only after their start is recorded. [`error_policy`] retries by error
//! category, backing off per Remediation and per consecutive failure.

use std::sync::Arc;
use std::{future::Future, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
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
use tracing::{Instrument, debug, info, warn};

use super::effects::Effects;
use super::limits::{Peer, limits_halt};
use super::machine::{Halt, Observations, PolicyView, Settings, halt_for};
use super::plan::{Plan, TransitionRecord, change_outcome, deleted_outcome, plan};
use super::stages::Stages;
use super::{history, trust};
use crate::api::approval::tally;
use crate::api::conditions::{self, ConditionType};
use crate::api::remediation::{ApprovalRecord, Phase, RemediationStatus, SilenceRecord, Step};
use crate::api::validate::ValidPolicy;
use crate::api::{ErrorCategory, FINALIZER, Remediation, RemediationApproval, RemediationPolicy, STATUS_MANAGER};
use crate::cluster::api_category;
use crate::notify::Notifier;
use crate::ports::{EffectKey, StageInput};
use crate::silence::Alertmanager;

pub use super::metrics::ControllerMetrics;
use super::metrics::{FinishedLabels, PhaseLabels};
use super::retry::failure_key;
pub use super::retry::{Failures, error_backoff};
pub use super::slots::DeploySlots;

/// Shared state of the controller.
pub struct Context {
    /// API client (the operator's own identity; only status and Events are written with it).
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Stage implementations.
    pub stages: Stages,
    /// In-flight effects.
    pub effects: Effects,
    /// Policies, kept current by a reflector.
    pub policies: Store<RemediationPolicy>,
    /// Approvals, kept current by a reflector.
    pub approvals: Store<RemediationApproval>,
    /// The kill-switch ConfigMap, kept current by a reflector (when one is configured).
    pub kill_switch: Option<(Store<ConfigMap>, ObjectRef<ConfigMap>)>,
    /// Every Remediation, as the controller's own cache holds them (for the deploy cap).
    pub remediations: Store<Remediation>,
    /// The cap on concurrent deploys.
    pub max_concurrent_deploys: Option<u32>,
    /// Alertmanager, for silences.
    pub alertmanager: Option<Arc<Alertmanager>>,
    /// Notifications.
    pub notifier: Option<Notifier>,
    /// The chained audit log.
    pub audit: Option<AuditSink>,
    /// Counts of transitions and outcomes.
    pub metrics: ControllerMetrics,
    /// Deploy slots let through and not yet seen taken in the cache.
    pub deploy_slots: DeploySlots,
    /// Consecutive reconcile failures per Remediation, for [`error_policy`]'s backoff.
    pub failures: Failures,
    /// Clock.
    pub clock: Arc<dyn Clock>,
}

/// What the controller enforces before every effect besides the policy (which it reads
/// itself): the operator-wide switches.
#[derive(Clone, Debug, Default)]
pub struct Guards {
    /// The kill-switch ConfigMap (`namespace`, `name`): `killSwitch: "true"` halts every
    /// Remediation before deploy, as it stops intake creating new ones.
    pub kill_switch: Option<(String, String)>,
    /// Most changes deploying or being verified at once, across the cluster.
    pub max_concurrent_deploys: Option<u32>,
    /// Alertmanager, for the silences policies ask for while a fix is in flight.
    pub alertmanager: Option<Arc<Alertmanager>>,
    /// Delivers the notifications policies ask for.
    pub notifier: Option<Notifier>,
    /// The chained audit log: gate decisions, approvals, deploys and rollbacks.
    pub audit: Option<AuditSink>,
    /// Counts of transitions and outcomes.
    pub metrics: ControllerMetrics,
}

/// The audit log the controller writes to (a newtype, so [`Guards`] stays `Debug`).
#[derive(Clone)]
pub struct AuditSink(pub Arc<dyn crate::audit::Sink>);

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
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
    /// Reading the Remediation from the API server (not the cache) failed.
    #[error("reading remediation {namespace}/{name}: {source}")]
    ReadRemediation {
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
    /// Recording a deployed change's outcome in its policy's trust record failed.
    #[error("recording the outcome of remediation {remediation} in policy {namespace}/{policy}: {source}")]
    RecordTrust {
        /// Namespace.
        namespace: String,
        /// The policy.
        policy: String,
        /// The Remediation.
        remediation: String,
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
            Self::WriteStatus { source, .. }
            | Self::ReadRemediation { source, .. }
            | Self::RecordTrust { source, .. }
            | Self::CrdMissing { source } => api_category(source),
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.category(),
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => api_category(e),
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => ErrorCategory::InvalidSpec,
            },
        }
    }
}

/// Runs the Remediation controller until `shutdown` completes.
///
/// # Errors
/// [`Error::CrdMissing`] when the CRDs are not installed.
pub async fn run(
    client: Client,
    stages: Stages,
    guards: Guards,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let remediations: Api<Remediation> = Api::all(client.clone());
    remediations.list(&ListParams::default().limit(1)).await.map_err(|source| Error::CrdMissing { source })?;

    let (policies, policy_feed) = mirror(Api::<RemediationPolicy>::all(client.clone()), watcher::Config::default());
    let (approvals, approval_feed) =
        mirror(Api::<RemediationApproval>::all(client.clone()), watcher::Config::default());
    let kill_switch = guards.kill_switch.as_ref().map(|(namespace, name)| {
        let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
        let (store, feed) = mirror(api, kill_switch_watch(name));
        ((store, ObjectRef::new(name).within(namespace)), feed)
    });
    let (kill_switch, kill_switch_feed) = match kill_switch {
        Some((watched, feed)) => (Some(watched), Some(feed)),
        None => (None, None),
    };
    let feeds = tokio::spawn(async move {
        let kill_switch_feed = async move {
            if let Some(feed) = kill_switch_feed {
                feed.await;
            }
        };
        futures::join!(policy_feed, approval_feed, kill_switch_feed)
    });
    // One shutdown for everything below, watched from here on: a replica told to stop while
    // its caches are still syncing stops then, rather than after they have synced.
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        })
    };
    let kill_switch_ready = async {
        match &kill_switch {
            Some((store, _)) => store.wait_until_ready().await,
            None => Ok(()),
        }
    };
    let ready = async { futures::join!(policies.wait_until_ready(), approvals.wait_until_ready(), kill_switch_ready) };
    let synced = tokio::select! {
        () = stop.cancelled() => false,
        (p, a, k) = ready => p.is_ok() && a.is_ok() && k.is_ok(),
    };
    if !synced {
        stopper.abort();
        feeds.abort();
        return Ok(());
    }

    let client_for_approvals = client.clone();
    // At most this many reconciles at once (the default is unbounded): a burst of
    // Remediations queues here instead of crowding out the webhook and the MCP server on the
    // same runtime. Effects run apart and are not bounded by it.
    let controller = Controller::new(remediations, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(MAX_RECONCILES));
    let index = controller.store();
    let (requeue_tx, requeue_rx) = futures::channel::mpsc::unbounded();
    let effects = Effects::new(requeue_tx);
    let reporter = Reporter { controller: "reflex".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        stages,
        effects: effects.clone(),
        policies,
        approvals,
        kill_switch,
        remediations: index.clone(),
        max_concurrent_deploys: guards.max_concurrent_deploys,
        deploy_slots: DeploySlots::default(),
        alertmanager: guards.alertmanager.clone(),
        notifier: guards.notifier.clone(),
        audit: guards.audit.clone(),
        metrics: guards.metrics.clone(),
        failures: Failures::default(),
        clock: Arc::new(SystemClock),
    });

    let everything = index.clone();
    let controller = match &guards.kill_switch {
        // The kill switch flipping concerns every Remediation.
        Some((namespace, name)) => controller.watches(
            Api::<ConfigMap>::namespaced(client.clone(), namespace),
            kill_switch_watch(name),
            move |_| everything.state().into_iter().map(|r| ObjectRef::from_obj(&*r)).collect::<Vec<_>>(),
        ),
        None => controller,
    };
    let controller = controller
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
        .reconcile_on(requeue_rx);
    // The same shutdown for both controllers: this one and the approvals' (which reports on
    // each RemediationApproval whether it counts).
    let remediations = async {
        controller
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(reconcile, error_policy, ctx)
            .for_each(|result| {
                if let Err(e) = result {
                    warn!(error = %e, "controller");
                }
                futures::future::ready(())
            })
            .await;
        // At once, not after the approvals controller: a replica that lost the lease must not
        // go on with an effect the new leader resumes.
        effects.cancel_all();
    };
    futures::join!(remediations, super::approvals::run(client_for_approvals, stop.clone().cancelled_owned()));
    stopper.abort();
    feeds.abort();
    Ok(())
}

/// Reconciles one Remediation (the Controller's callback).
///
/// # Errors
/// Finalizer and status-write failures; stage failures are recorded in status instead.
pub async fn reconcile(rem: Arc<Remediation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace =
        rem.namespace().ok_or_else(|| Error::MissingMetadata { name: rem.name_any(), missing: "namespace" })?;
    let api: Api<Remediation> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = failure_key(&rem);
    let span = reconcile_span(&rem);
    let started = std::time::Instant::now();
    let action = finalizer(&api, FINALIZER, rem, |event| async {
        match event {
            finalizer::Event::Apply(rem) => apply(rem, &ctx).await,
            finalizer::Event::Cleanup(rem) => cleanup(rem, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    let action = action.map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.failures.clear(&key);
    Ok(action)
}

/// Reconciles running at once (see [`run`]).
const MAX_RECONCILES: u16 = 16;

/// The span of one reconcile, in the Remediation's own trace: its trace id is derived from
/// the uid ([`super::plan::trace_id`], the one `status.traceId` shows — re-derived here, never
/// read from status) and its parent is the Remediation's root span, so every reconcile,
/// effect, MCP call and LLM call of one run lands in one trace across restarts and replicas.
fn reconcile_span(rem: &Remediation) -> tracing::Span {
    let span = tracing::info_span!("reconcile", otel.name = "reconcile", remediation = %rem.name_any(),
        namespace = rem.namespace().unwrap_or_default(), phase = tracing::field::Empty);
    if let Some(trace_id) = rem.metadata.uid.as_deref().and_then(super::plan::trace_id) {
        crate::telemetry::trace::continue_trace(&span, &trace_id, &crate::telemetry::trace::root_span_id(&trace_id));
    }
    if let Some(status) = &rem.status {
        span.record("phase", status.phase.to_string());
    }
    span
}

/// Retry by error category: transient → back off (per Remediation, growing with each
/// consecutive failure, jittered); forbidden or missing → slowly, surfaced in logs; invalid
/// input → wait for a change.
pub fn error_policy(rem: Arc<Remediation>, error: &Error, ctx: Arc<Context>) -> Action {
    let category = error.category();
    let key = failure_key(&rem);
    let failures = ctx.failures.record(&key);
    warn!(remediation = %rem.name_any(), category = %category, failures, error = %error, "reconcile failed");
    match category {
        ErrorCategory::Transient | ErrorCategory::Deferred | ErrorCategory::Conflict => {
            Action::requeue(error_backoff(&key, failures))
        }
        ErrorCategory::Forbidden | ErrorCategory::NotFound => Action::requeue(Duration::from_secs(300)),
        ErrorCategory::InvalidSpec
        | ErrorCategory::BudgetExhausted
        | ErrorCategory::NeedsHuman
        | ErrorCategory::NotApplicable => Action::await_change(),
    }
}

/// One reconcile of a live Remediation: observe, decide ([`plan`]), act and record.
async fn apply(rem: Arc<Remediation>, ctx: &Context) -> Result<Action, Error> {
    let name = rem.name_any();
    let namespace =
        rem.namespace().ok_or_else(|| Error::MissingMetadata { name: name.clone(), missing: "namespace" })?;
    let uid = rem.uid().ok_or_else(|| Error::MissingMetadata { name: name.clone(), missing: "uid" })?;
    let api: Api<Remediation> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe.
    let now = ctx.clock.now();
    let (policy_view, policy) = observe_policy(ctx, &namespace, &rem.spec.policy_ref.name);
    let (running, finished) = ctx.effects.state(&uid);
    // Before it starts: is the policy still trying on this target?
    let not_started = rem.status.as_ref().is_none_or(|s| s.started_at.is_none());
    let ineffective = match policy.as_deref() {
        Some(p) if not_started => {
            history::before_start(ctx, &rem, p).instrument(tracing::info_span!("history")).await?
        }
        _ => None,
    };
    let finished_key = finished.as_ref().map(|(k, _)| k.clone());
    // Observe and decide under the deploy slots' lock: counting them and taking one is one step.
    let (obs, plan) = {
        let slots = ctx.deploy_slots.lock();
        let obs = Observations {
            now,
            policy: policy_view,
            stages: ctx.stages.available(),
            running: running.map(|k| (k.step, k.attempt)),
            halt: halt_for(kill_switch_on(ctx), policy.as_deref(), &rem, now)
                .or_else(|| policy.as_deref().and_then(|p| over_limits(ctx, &rem, p, now))),
            deploys_at_cap: slots.at_cap(ctx, &rem),
            ineffective,
        };
        let plan = plan(&rem, finished, observe_approval(ctx, &rem, policy.as_deref(), now), &obs);
        slots.settle(&rem, &plan);
        (obs, plan)
    };

    let mut plan = plan;
    keep_silence(ctx, &rem, policy.as_deref(), &mut plan.status).instrument(tracing::info_span!("silence")).await;
    let ending = plan.status.phase.is_terminal() && rem.status.as_ref().is_none_or(|s| !s.phase.is_terminal());
    if ending && plan.status.deploy.as_ref().is_none_or(|d| d.pull_request.is_none()) {
        release(ctx, &rem, policy.clone()).await;
    }

    // Act and record.
    if rem.status.as_ref() != Some(&plan.status) {
        write_status(&api, &rem, &plan.status)
            .instrument(tracing::info_span!("write_status"))
            .await
            .map_err(|source| Error::WriteStatus { namespace: namespace.clone(), name: name.clone(), source })?;
    } else if plan.start.is_some() {
        // Resuming an effect recorded as started but running nowhere here (after a restart)
        // writes nothing, so no resourceVersion guard protects it. Make sure the cache is not
        // just behind our own last write (which may already hold this effect's result)
        // before starting it again: a consistent read must show the same version.
        let fresh = api.get(&name).await.map_err(|source| Error::ReadRemediation {
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
        ctx.effects.clear_finished(&key);
    }
    // Only once the terminal status is stored: cancelling earlier would also drop a finished
    // result that a failed write has not recorded yet, and the effect would run again.
    if plan.cancel_running && ctx.effects.cancel(&uid) {
        info!(remediation = %name, "cancelled the in-flight effect");
    }
    announce(ctx, &rem, &plan.transitions).instrument(tracing::info_span!("events")).await;
    audit_effects(ctx, &rem, &plan.status);
    ctx.metrics.observe(&rem.status.clone().unwrap_or_default(), &plan.status, rem.spec.alert.starts_at.0, now);
    tell(ctx, &rem, policy.as_deref(), &plan).instrument(tracing::info_span!("notify")).await;
    let outcome = change_outcome(&rem, &plan.status);
    history::record_fix(ctx, &rem, &plan.status, outcome.as_ref(), policy.as_deref()).await?;
    trust::record_outcome(ctx, &rem, outcome, policy.as_deref()).await?;
    // Rollback needs no policy (the snapshot is in status); decide() starts nothing else
    // without a valid policy.
    if let Some((step, attempt)) = plan.start.filter(|(step, _)| policy.is_some() || *step == Step::Rollback) {
        if step == Step::Deploy {
            // In the policy's trust record before anything is written.
            trust::enter_pending(ctx, &rem).await?;
        }
        let key = EffectKey { uid: uid.clone(), step, attempt };
        let mut current = (*rem).clone();
        current.status = Some(plan.status.clone());
        let cancel = CancellationToken::new();
        let input = StageInput { remediation: Arc::new(current), policy, key: key.clone(), cancel: cancel.clone() };
        // A stage that panics while starting its effect fails that step like one that panics
        // while running it (see `Effects::spawn`).
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.stages.start(input)))
            .unwrap_or_else(|p| {
                let failed: crate::ports::StageFuture<crate::ports::StageOutput> =
                    Box::pin(futures::future::ready(Err(super::effects::panicked(&*p))));
                Some(failed)
            });
        if let Some(effect) = started {
            info!(remediation = %name, effect = %key, "starting effect");
            // The effect's span: a child of this reconcile's, so of the Remediation's trace.
            let stage = step.to_string().to_ascii_lowercase();
            let span = tracing::info_span!("step", otel.name = %stage, step = %step, attempt);
            let effect: crate::ports::StageFuture<crate::ports::StageOutput> = Box::pin(effect.instrument(span));
            ctx.effects.spawn(key, ObjectRef::from_obj(&*rem), cancel, effect);
        }
    }
    // A stall the clock or another Remediation ends (a freeze, the deploy cap) is looked at
    // again without waiting for a change to this one.
    let recheck =
        obs.halt.as_ref().and_then(|h| h.recheck_after).or(obs.deploys_at_cap.map(|_| Duration::from_secs(5)));
    Ok(next_look(&plan, recheck))
}

/// When to reconcile again after `plan` (a stall that ends by the clock, such as a freeze,
/// is looked at again after `recheck`).
fn next_look(plan: &Plan, recheck: Option<Duration>) -> Action {
    let stalled = conditions::find(&plan.status.conditions, ConditionType::Stalled).is_some_and(|c| c.status == "True");
    match plan.requeue.or(recheck.filter(|_| stalled)) {
        Some(after) => Action::requeue(after.max(Duration::from_millis(100))),
        None if plan.status.phase.is_terminal() || stalled || plan.start.is_some() => Action::await_change(),
        // Level-triggered safety net: look again even if no event arrives.
        None => Action::requeue(Duration::from_secs(300)),
    }
}

/// A deleted Remediation: cancel its in-flight effect and, when its change was applied but
/// not verified, reset its policy's earned trust ([`deleted_outcome`]); the finalizer then
/// lets it go (a failed trust write keeps it, and the cleanup is retried).
async fn cleanup(rem: Arc<Remediation>, ctx: &Context) -> Result<Action, Error> {
    if let Some(uid) = rem.uid()
        && ctx.effects.cancel(&uid)
    {
        info!(remediation = %rem.name_any(), "deleted: cancelled the in-flight effect");
    }
    let namespace = rem.namespace().unwrap_or_default();
    let (_, policy) = observe_policy(ctx, &namespace, &rem.spec.policy_ref.name);
    trust::record_outcome(ctx, &rem, deleted_outcome(&rem, ctx.clock.now()), policy.as_deref()).await?;
    if rem.status.as_ref().is_none_or(|s| !s.phase.is_terminal()) {
        release(ctx, &rem, policy).await;
    }
    Ok(Action::await_change())
}

/// Lets go of what testing left outside the cluster (a GitOps pull request and its branch)
/// when a Remediation ends, or is deleted, without its change merged. A failure is logged and
/// announced: the branch is named after the Remediation, for a person to close.
async fn release(ctx: &Context, rem: &Remediation, policy: Option<Arc<ValidPolicy>>) {
    let Some(test) = ctx.stages.test.clone() else { return };
    let key = EffectKey { uid: rem.uid().unwrap_or_default(), step: Step::Test, attempt: 0 };
    let input = StageInput { remediation: Arc::new(rem.clone()), policy, key, cancel: CancellationToken::new() };
    if let Err(e) = test.release(input).await {
        warn!(remediation = %rem.name_any(), error = %e, "could not close the change's pull request or delete its branch; close reflex/<name> by hand");
    }
}

/// Tells people, through the webhook the policy names (its URL in a Secret of the
/// Remediation's namespace), about each transition into a phase they act on
/// ([`crate::notify::TOLD`]). Delivery is in the background and never blocks the loop; a
/// missing Secret or a refused URL is logged and counted.
async fn tell(ctx: &Context, rem: &Remediation, policy: Option<&ValidPolicy>, plan: &Plan) {
    let (Some(notifier), Some(spec)) = (ctx.notifier.as_ref(), policy.and_then(|p| p.notify.as_ref())) else { return };
    let told: Vec<&TransitionRecord> =
        plan.transitions.iter().filter(|t| crate::notify::TOLD.contains(&t.to)).collect();
    if told.is_empty() {
        return;
    }
    let namespace = rem.namespace().unwrap_or_default();
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&spec.webhook_secret_ref.name)
        .await;
    let url = match secret {
        Ok(Some(s)) => s
            .data
            .and_then(|d| d.get(&spec.webhook_secret_ref.key).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .ok_or_else(|| {
                format!(
                    "Secret {namespace}/{} has no key {:?}",
                    spec.webhook_secret_ref.name, spec.webhook_secret_ref.key
                )
            })
            .and_then(|u| crate::notify::check_url(&u, notifier.allow_http)),
        Ok(None) => Err(format!("Secret {namespace}/{} does not exist", spec.webhook_secret_ref.name)),
        Err(e) => Err(format!("reading Secret {namespace}/{}: {e}", spec.webhook_secret_ref.name)),
    };
    let url = match url {
        Ok(u) => u,
        Err(why) => {
            warn!(remediation = %rem.name_any(), error = %why, "cannot notify");
            for _ in &told {
                notifier.failed();
            }
            return;
        }
    };
    let mut current = rem.clone();
    current.status = Some(plan.status.clone());
    for t in told {
        notifier.send(url.clone(), crate::notify::message(&current, t.to, t.reason, &t.message, spec.format));
    }
}

/// Holds an Alertmanager silence of `rem`'s alert while its fix is in flight (deploying,
/// verifying, rolling back), for policies that ask, and expires it when the Remediation
/// ends; recorded in `status.silence`. Alertmanager unreachable never blocks the loop: logged,
/// and tried again on the next reconcile.
async fn keep_silence(ctx: &Context, rem: &Remediation, policy: Option<&ValidPolicy>, status: &mut RemediationStatus) {
    let Some(am) = ctx.alertmanager.as_ref() else { return };
    let name = rem.name_any();
    match &status.silence {
        // A Remediation asked for over A2A carries the caller's word for its alert: never a
        // silence on that.
        None if status.phase.after_deploy()
            && policy.is_some_and(|p| p.silence_alert)
            && !rem.labels().contains_key(crate::api::remediation::REQUESTED_OVER_LABEL) =>
        {
            let policy = policy.map_or(Duration::from_secs(3600), |p| {
                let verify = p.verify.as_ref().map_or(Duration::from_secs(600), |v| v.initial_delay + v.timeout);
                p.rollout_timeout + verify + Duration::from_secs(300)
            });
            let now = ctx.clock.now();
            let ends = now.checked_add(policy).unwrap_or(now);
            let labels: std::collections::BTreeMap<String, String> =
                rem.spec.alert.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let comment = format!("Reflex is fixing this: Remediation {}/{name}", rem.namespace().unwrap_or_default());
            match am.silence(&labels, ends, &comment).await {
                Ok(id) => {
                    info!(remediation = %name, silence = %id, "silenced the alert while the fix is in flight");
                    status.silence = Some(SilenceRecord { id, ends_at: Time(ends), expired: false });
                }
                Err(e) => warn!(remediation = %name, error = %e, "could not silence the alert"),
            }
        }
        Some(s) if status.phase.is_terminal() && !s.expired => match am.expire(&s.id).await {
            Ok(()) => {
                info!(remediation = %name, silence = %s.id, "expired the silence: the Remediation ended");
                status.silence = Some(SilenceRecord { expired: true, ..s.clone() });
            }
            Err(e) => warn!(remediation = %name, error = %e, "could not expire the silence; it ends by itself"),
        },
        _ => {}
    }
}

/// Whether one of the policy's limits holds `rem` back, judged over every Remediation in the
/// controller's cache ([`limits_halt`]).
fn over_limits(ctx: &Context, rem: &Remediation, policy: &ValidPolicy, now: Timestamp) -> Option<Halt> {
    let me = Peer::of(rem)?;
    let peers: Vec<Peer> = ctx
        .remediations
        .state()
        .iter()
        .filter(|r| r.metadata.namespace == rem.metadata.namespace)
        .filter_map(|r| Peer::of(r))
        .collect();
    limits_halt(&me, &peers, &policy.limits, now)
}

/// Whether the operator's kill switch is on (`killSwitch: "true"` in its ConfigMap).
fn kill_switch_on(ctx: &Context) -> bool {
    ctx.kill_switch
        .as_ref()
        .and_then(|(store, at)| store.get(at))
        .is_some_and(|cm| cm.data.as_ref().and_then(|d| d.get("killSwitch")).is_some_and(|v| v.trim() == "true"))
}

/// A watch of the one kill-switch ConfigMap.
fn kill_switch_watch(name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={name}"))
}

fn settings(policy: &ValidPolicy) -> Settings {
    Settings {
        max_attempts: policy.limits.max_attempts,
        max_duration: policy.limits.max_duration,
        approval_timeout: policy.trust.approval_timeout,
        diagnose_only: policy.trust.level == crate::api::policy::TrustLevel::Observe,
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

/// The decision the cached approvals make for `rem` under its policy (`approval::tally`):
/// a rejection, or enough distinct approvers of the current proposal, before the deadline.
fn observe_approval(
    ctx: &Context,
    rem: &Remediation,
    policy: Option<&ValidPolicy>,
    now: Timestamp,
) -> Option<ApprovalRecord> {
    let trust = &policy?.trust;
    let deadline = rem.status.as_ref().and_then(|s| s.approval_deadline(trust.approval_timeout));
    let approvals = ctx.approvals.state();
    tally(rem, approvals.iter().map(AsRef::as_ref), deadline).decision(trust.required_approvals, Time(now))
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

/// One Event (and log line) per phase transition.
async fn announce(ctx: &Context, rem: &Remediation, transitions: &[TransitionRecord]) {
    let name = rem.name_any();
    let reference = rem.object_ref(&());
    for t in transitions {
        info!(remediation = %name, from = %t.from, to = %t.to, reason = t.reason, "{}", t.message);
        ctx.metrics.transitions.get_or_create(&PhaseLabels { phase: t.to.to_string() }).inc();
        if t.to.is_terminal() {
            ctx.metrics
                .finished
                .get_or_create(&FinishedLabels { phase: t.to.to_string(), reason: t.reason.to_owned() })
                .inc();
        }
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
}

/// One audit record for each decision or change this reconcile recorded for the first time:
/// the gate's decision, the approval that counted, the deploy, the rollback.
fn audit_effects(ctx: &Context, rem: &Remediation, next: &RemediationStatus) {
    let Some(AuditSink(sink)) = ctx.audit.as_ref() else { return };
    let before = rem.status.clone().unwrap_or_default();
    let trace = next.trace_id.as_deref();
    let id = format!("{}/{}", rem.namespace().unwrap_or_default(), rem.name_any());
    let put = |kind: &str, changed: bool, value: serde_json::Value| {
        if changed {
            sink.record(kind, trace, serde_json::json!({"remediation": id, kind: value}));
        }
    };
    put("gate", next.gate.is_some() && next.gate != before.gate, serde_json::json!(next.gate));
    put("approval", next.approval.is_some() && next.approval != before.approval, serde_json::json!(next.approval));
    put("deploy", next.deploy.is_some() && next.deploy != before.deploy, serde_json::json!(next.deploy));
    put("rollback", next.rollback.is_some() && next.rollback != before.rollback, serde_json::json!(next.rollback));
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A store kept current by a watch, and the future that feeds it (run it to keep the
/// store current; it reconnects with backoff on watch errors).
fn mirror<K>(api: Api<K>, config: watcher::Config) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let feed = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    (store, feed)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_errors_back_off_per_remediation_and_per_consecutive_failure() {
        let failures = Failures::default();
        let delays: Vec<Duration> = (0..4).map(|_| error_backoff("shop/a", failures.record("shop/a"))).collect();
        assert!(delays.windows(2).all(|w| w[1] > w[0]), "each consecutive failure waits longer: {delays:?}");
        assert_eq!(failures.record("shop/b"), 1, "another Remediation's failures are its own");
        failures.clear("shop/a");
        assert_eq!(failures.record("shop/a"), 1, "a successful reconcile starts the count again");
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).map(|i| error_backoff(&format!("shop/r{i}"), 3)).collect();
        assert!(spread.len() > 10, "Remediations failing together do not retry in lockstep");
    }
}
