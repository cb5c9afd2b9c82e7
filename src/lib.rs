//! Reflex: a Kubernetes operator that closes the loop from a Prometheus alert to a verified
//! fix — intake, diagnose, propose, test, gate, deploy, verify, roll back.
//!
//! One module per loop stage, each with a pure core and a thin effectful shell, behind the
//! stage ports (`ports`); `operator` assembles them. The layers, the path of one alert
//! through the modules and the rules `tests/architecture.rs` enforces: `docs/ARCHITECTURE.md`.

pub mod a2a;
pub mod agent;
pub mod api;
pub mod audit;
pub mod ci;
pub mod cluster;
pub mod controller;
pub mod demo;
pub mod deploy;
pub mod egress;
pub mod gate;
pub mod gitops;
pub mod intake;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod oncall;
pub mod operator;
pub mod patch;
pub mod ports;
pub mod sandbox;
pub mod silence;
pub mod simulate;
pub mod telemetry;
pub mod verify;
pub mod web;

/// Installs ring as rustls's process-wide crypto provider. Call once at start-up and in
/// test set-up: without it, building a TLS client panics even for `http://` URLs.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
