//! Deploy and rollback: snapshot the fields a patch touches, apply it with server-side
//! apply (field manager `reflex`) as the gate's identity, and restore the snapshot.
//!
//! Contract: [`Deploy`] and [`Rollback`] are the controller's seams. `apply` only accepts
//! a [`TestedPatch`]; the snapshot is recorded in status before `apply` is ever called.

use crate::api::remediation::{DeployRecord, RollbackRecord};
use crate::controller::stages::{StageFuture, StageInput};
use crate::patch::TestedPatch;

/// Snapshots and applies changes.
pub trait Deploy: Send + Sync {
    /// Records the target's current values of every field the proposal touches.
    fn snapshot(&self, input: StageInput) -> StageFuture<DeployRecord>;
    /// Applies a tested patch; returns the snapshot record completed with what was applied.
    fn apply(&self, input: StageInput, patch: TestedPatch) -> StageFuture<DeployRecord>;
}

/// Restores the recorded previous state.
pub trait Rollback: Send + Sync {
    /// Restores `status.deploy.previous` on the target.
    fn rollback(&self, input: StageInput) -> StageFuture<RollbackRecord>;
}
pub mod apply;
