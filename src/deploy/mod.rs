//! Deploy and rollback: snapshot the fields a patch touches, apply it with server-side
//! apply (under the Remediation's own field manager, `reflex-<name>-<uid hash>`), and restore the
//! snapshot.
//!
//! Contract: implements the ports `Deploy` and `Rollback` ([`apply::ServerSideApply`]).
//! `apply` only accepts a `TestedPatch`, and before it writes it re-derives everything it
//! relies on ([`recheck`]: safety, the target unchanged since CI, the gate and approvals);
//! the snapshot is recorded in status before `apply` is ever called. [`request`] builds the
//! one request that deploys a proposal, which CI dry-runs unchanged.

pub mod apply;
pub mod disruption;
pub mod gitops;
pub mod identity;
pub mod recheck;
pub mod request;
pub mod rollout;
