//! GitOps: the change as a commit in the repository the cluster is synced from.
pub mod flow;
pub mod forge;
pub mod manifest;
pub mod repo;

/// A commit's first 12 characters, as people quote them.
pub fn short(sha: &str) -> &str {
    &sha[..sha.floor_char_boundary(12)]
}
