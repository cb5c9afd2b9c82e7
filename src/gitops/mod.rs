//! GitOps: the change as a commit in the repository the cluster is synced from.
pub mod manifest;
