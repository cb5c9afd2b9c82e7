//! The controller: drives each Remediation through the loop.
//!
//! Contract: [`machine`] decides (pure); [`reconcile`] observes, performs the one effect
//! the decision names through a [`stages`] trait, and records it in status. Only the
//! leader runs it ([`leader`]).

pub mod leader;
pub mod machine;
pub mod reconcile;
pub mod runs;
pub mod stages;
