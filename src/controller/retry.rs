//! Retrying a failed reconcile: consecutive failures counted per Remediation, and the
//! jittered delay that grows with them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;

use super::machine::{Settings, jittered};
use crate::api::Remediation;

/// The delay before retrying a Remediation's reconcile after its `failures`-th consecutive
/// failure.
pub fn error_backoff(key: &str, failures: u32) -> Duration {
    jittered(&Settings::default(), key.bytes(), failures)
}

/// Which Remediation a failure count belongs to: its uid (a Remediation re-created under the
/// same name starts afresh), else `namespace/name`.
pub(super) fn failure_key(rem: &Remediation) -> String {
    rem.uid().unwrap_or_else(|| format!("{}/{}", rem.namespace().unwrap_or_default(), rem.name_any()))
}

/// Consecutive reconcile failures per Remediation, whatever their category; a successful
/// reconcile clears the count.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts one more failure of `key`; returns how many in a row.
    pub fn record(&self, key: &str) -> u32 {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets `key`'s failures after a successful reconcile.
    pub fn clear(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(key);
    }
}
