//! GitOps: the change as a commit in the repository the cluster is synced from.
pub mod flow;
pub mod forge;
pub mod manifest;
pub mod repo;
