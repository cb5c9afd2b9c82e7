//! The sandbox: an in-memory Kubernetes API over real HTTP for `demo`, `simulate` and the
//! integration tests.
//!
//! Contract: nothing here yet; when it lands, `kube::Client` and `kubectl` talk to it
//! unchanged.
