//! The sandbox: an in-memory Kubernetes API over real HTTP for `demo`, `simulate` and the
//! integration tests.
//!
//! Contract: nothing here yet; when it lands, `kube::Client` and `kubectl` talk to it
//! unchanged.

pub mod merge;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod ssa;
pub mod status;
pub mod store;
