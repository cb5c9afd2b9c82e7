//! The stage ports: the seams between the controller and the loop's stages.
//!
//! Contract: this module holds only types and traits — the effect key, what a stage gets
//! ([`StageInput`]) and gives back ([`StageOutput`], [`StageError`]), and one trait per stage
//! ([`Diagnose`], [`Propose`], [`Test`], [`Gate`], [`Deploy`], [`Rollback`], [`Verify`]). The
//! stage modules (`agent`, `ci`, `gate`, `deploy`, `verify`) implement the traits; the
//! controller drives them through its registry (`controller::stages::Stages`). Neither side
//! knows the other.
//!
//! Every stage receives an [`EffectKey`] and must be idempotent per key — it may be called
//! again with the same key after a crash. A stage never writes the Remediation's status: it
//! returns its output and the controller records it.

use std::{fmt, sync::Arc};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::api::ErrorCategory;
use crate::api::remediation::{
    CiResult, DeployRecord, Diagnosis, GateResult, Proposal, Remediation, RollbackRecord, RolloutStatus, Step,
    Verification,
};
use crate::api::validate::ValidPolicy;
use crate::patch::TestedPatch;

/// Identifies one effect: remediation uid, step, attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EffectKey {
    /// The Remediation's uid.
    pub uid: String,
    /// Which effect.
    pub step: Step,
    /// Attempt number.
    pub attempt: u32,
}

impl fmt::Display for EffectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.uid, self.step, self.attempt)
    }
}

/// Everything a stage gets.
#[derive(Clone)]
pub struct StageInput {
    /// The Remediation as of the decision.
    pub remediation: Arc<Remediation>,
    /// The governing policy, validated; absent only for a rollback whose policy was
    /// deleted after the change was applied.
    pub policy: Option<Arc<ValidPolicy>>,
    /// The effect's key.
    pub key: EffectKey,
    /// Cancelled when the Remediation is cancelled, the alert resolves, or the operator stops.
    pub cancel: CancellationToken,
}

/// A stage failure, categorised so the machine can retry, fail or escalate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{category}: {message}")]
pub struct StageError {
    /// How it failed.
    pub category: ErrorCategory,
    /// What a human should know.
    pub message: String,
}

impl StageError {
    /// Builds an error.
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self { category, message: message.into() }
    }
}

/// What a stage may return.
pub type StageResult<T> = Result<T, StageError>;
/// The boxed future a stage returns.
pub type StageFuture<T> = BoxFuture<'static, StageResult<T>>;

/// The output of any step, to be recorded in status.
#[derive(Clone, Debug, PartialEq)]
pub enum StageOutput {
    /// From diagnose.
    Diagnosis(Diagnosis),
    /// From propose.
    Proposal(Proposal),
    /// From test (CI).
    Ci(CiResult),
    /// From gate.
    Gate(GateResult),
    /// From snapshot (previous values) or deploy (the same record, now applied).
    Deploy(DeployRecord),
    /// From rollout (one check of the applied change's rollout).
    Rollout(RolloutStatus),
    /// From verify (one sample and the verdict so far).
    Verification(Verification),
    /// From rollback.
    Rollback(RollbackRecord),
}

/// Reads production and summarises what is wrong (`agent`).
pub trait Diagnose: Send + Sync {
    /// Produces a diagnosis for the remediation in `input`.
    fn diagnose(&self, input: StageInput) -> StageFuture<Diagnosis>;
}

/// Produces a patch proposal from the diagnosis (`agent`).
pub trait Propose: Send + Sync {
    /// Produces a proposal for the remediation in `input`.
    fn propose(&self, input: StageInput) -> StageFuture<Proposal>;
}

/// Tests a proposal: the test step, phase `Testing`, implemented by the CI backends (`ci`).
/// It never changes the target; its result names the digest of the proposal it tested, so a
/// later edit invalidates it.
pub trait Test: Send + Sync {
    /// Tests the proposal recorded in `input.remediation`'s status.
    fn test(&self, input: StageInput) -> StageFuture<CiResult>;

    /// Releases what testing left outside the cluster once the Remediation has ended (or is
    /// deleted) without deploying it — a GitOps pull request and its branch, found by the
    /// Remediation itself, not by status. Default: nothing to release.
    fn release(&self, input: StageInput) -> StageFuture<()> {
        let _ = input;
        Box::pin(futures::future::ready(Ok(())))
    }
}

/// Decides whether a tested change may deploy now, needs a human, or must not happen
/// (`gate`). It decides; it changes nothing.
pub trait Gate: Send + Sync {
    /// Decides for the remediation in `input`.
    fn gate(&self, input: StageInput) -> StageFuture<GateResult>;
}

/// Snapshots and applies changes (`deploy`). `apply` only accepts a [`TestedPatch`]; the
/// snapshot is recorded in status before `apply` is ever called.
pub trait Deploy: Send + Sync {
    /// Records the target's current values of every field the proposal touches.
    fn snapshot(&self, input: StageInput) -> StageFuture<DeployRecord>;
    /// Applies a tested patch; returns the snapshot record completed with what was applied.
    fn apply(&self, input: StageInput, patch: TestedPatch) -> StageFuture<DeployRecord>;
    /// Checks once how the applied change is rolling out (reads only).
    fn rollout(&self, input: StageInput) -> StageFuture<RolloutStatus>;
}

/// Restores the recorded previous state (`deploy`).
pub trait Rollback: Send + Sync {
    /// Restores `status.deploy.previous` on the target.
    fn rollback(&self, input: StageInput) -> StageFuture<RollbackRecord>;
}

/// Takes one verification sample (`verify`): the verification so far (samples, verdict,
/// when the next sample is due). Read-only.
pub trait Verify: Send + Sync {
    /// Samples and judges for the remediation in `input`.
    fn verify(&self, input: StageInput) -> StageFuture<Verification>;
}
