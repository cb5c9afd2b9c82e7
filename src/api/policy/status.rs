//! What the operator records on a policy: conditions, each target's history and pauses,
//! and the trust a policy has earned.

use super::*;

/// What the operator observed about a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicyStatus {
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether the policy is valid, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Remediations of this policy currently in flight.
    #[serde(default)]
    pub active_remediations: u32,
    /// Name of the most recent Remediation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remediation: Option<String>,
    /// The earned-trust record for production.
    #[serde(default)]
    pub trust: TrustRecord,
    /// Alerts suppressed, by reason (cooldown, rate_limit, suspended, kill_switch, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suppressed: BTreeMap<String, u64>,
    /// Each target's recent fixes, and whether the policy has stopped trying on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub targets: Vec<TargetHistory>,
}

/// One target's recent fixes under this policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetHistory {
    /// The target's kind.
    pub kind: TargetKind,
    /// Its name.
    pub name: String,
    /// Recent deployed fixes, oldest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub fixes: Vec<FixRecord>,
    /// Set when the policy stopped trying on this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<TargetPause>,
}

/// One deployed fix and how it ended.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FixRecord {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// The playbook it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// Verified (the fix held).
    pub verified: bool,
    /// Neither proven nor disproven (verification Inconclusive or Error — no data, the
    /// metrics provider down): not held against the playbook.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unproven: bool,
    /// How it ended.
    pub outcome: String,
    /// When it ended.
    pub at: Time,
    /// When the alert came back after it (a verified fix only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realerted_at: Option<Time>,
}

/// Why and since when the policy stopped trying on a target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetPause {
    /// Why.
    pub reason: String,
    /// Since when.
    pub since: Time,
    /// The policy generation it was paused under: changing the policy's spec resumes it.
    pub generation: i64,
}

/// The policy's earned-trust record: verified successes since the last failure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrustRecord {
    /// Verified successes since the last reset, oldest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub verified: Vec<VerifiedSuccess>,
    /// When trust was last reset by a failed verification or rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<Time>,
    /// Why trust was last reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_reason: Option<String>,
    /// The uid of the Remediation whose failure reset it (so it is counted once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_by: Option<String>,
    /// Whether production changes at trust `auto` deploy without a human now (a summary; the
    /// gate recomputes it).
    #[serde(default)]
    pub earned: bool,
    /// The digest of the policy's spec the successes were earned under
    /// ([`RemediationPolicySpec::trust_basis`]): another spec starts from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    /// Changes written to a target whose outcome is not in the record yet (entered before the
    /// write). While one is here no production change goes through on earned trust, and one
    /// whose Remediation is gone without an outcome counts as a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub pending: Vec<PendingChange>,
}

/// A change written (or about to be) whose outcome is not known yet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingChange {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// When its deploy began.
    pub since: Time,
}

/// One verified success.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedSuccess {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// When its verification passed.
    pub at: Time,
}

/// How a deployed change ended, for the trust record.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeOutcome {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// Verified (`None`), or why not.
    pub failure: Option<String>,
    /// When it ended.
    pub at: Time,
}

const MAX_VERIFIED: usize = 1000;

impl TrustRecord {
    /// The record with `remediation`'s change entered as pending (unchanged when it is
    /// already pending or its outcome is known).
    #[must_use]
    pub fn with_pending(&self, remediation: &str, uid: &str, since: Time) -> Self {
        let mut next = self.clone();
        if !self.knows(uid) && !self.pending.iter().any(|p| p.uid == uid) {
            next.pending.push(PendingChange { remediation: remediation.to_owned(), uid: uid.to_owned(), since });
            let excess = next.pending.len().saturating_sub(MAX_VERIFIED);
            next.pending.drain(..excess);
        }
        next
    }

    /// A pending change other than `uid`'s: its outcome is not known yet.
    pub fn unresolved_besides(&self, uid: &str) -> Option<&PendingChange> {
        self.pending.iter().find(|p| p.uid != uid)
    }

    /// Whether this Remediation's outcome is already in the record.
    pub fn knows(&self, uid: &str) -> bool {
        self.last_reset_by.as_deref() == Some(uid) || self.verified.iter().any(|v| v.uid == uid)
    }

    /// Whether `outcome` changes the record: a Remediation not yet in it, that ended after
    /// the last reset (an older one is history the reset already judged — it must not come
    /// back into the run when its Remediation is reconciled again).
    pub fn takes(&self, outcome: &ChangeOutcome) -> bool {
        !self.knows(&outcome.uid) && self.last_reset.as_ref().is_none_or(|reset| outcome.at.0 > reset.0)
    }

    /// Verified successes within `window` before `now`, since the last reset, earned under
    /// `basis` (none under another).
    pub fn verified_within(&self, window: std::time::Duration, now: k8s_openapi::jiff::Timestamp, basis: &str) -> u32 {
        if self.basis.as_deref() != Some(basis) {
            return 0;
        }
        let since = k8s_openapi::jiff::SignedDuration::try_from(window)
            .ok()
            .and_then(|w| now.checked_sub(w).ok())
            .unwrap_or(k8s_openapi::jiff::Timestamp::MIN);
        u32::try_from(self.verified.iter().filter(|v| v.at.0 >= since).count()).unwrap_or(u32::MAX)
    }

    /// The record with `outcome` in it: a verified success adds to the run, a failure resets
    /// it. `earned` is recomputed for `required` successes within `window`. Pure; a known
    /// Remediation changes nothing.
    #[must_use]
    pub fn with(&self, outcome: ChangeOutcome, required: u32, window: std::time::Duration, basis: &str) -> Self {
        let mut next = self.clone();
        next.pending.retain(|p| p.uid != outcome.uid);
        if !self.takes(&outcome) {
            return next;
        }
        if next.basis.as_deref() != Some(basis) {
            // The policy changed what it does: its record starts again.
            next.verified.clear();
            next.basis = Some(basis.to_owned());
        }
        let now = outcome.at.0;
        match outcome.failure {
            None => {
                next.verified.push(VerifiedSuccess {
                    remediation: outcome.remediation,
                    uid: outcome.uid,
                    at: outcome.at,
                });
                let excess = next.verified.len().saturating_sub(MAX_VERIFIED);
                next.verified.drain(..excess);
            }
            Some(why) => {
                next.verified.clear();
                next.last_reset = Some(outcome.at);
                next.last_reset_reason = Some(format!("{}: {why}", outcome.remediation));
                next.last_reset_by = Some(outcome.uid);
            }
        }
        next.earned = next.verified_within(window, now, basis) >= required.max(1);
        next
    }
}

#[cfg(test)]
mod trust_tests {
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn outcome(uid: &str, failure: Option<&str>, secs: i64) -> ChangeOutcome {
        ChangeOutcome {
            remediation: format!("r-{uid}"),
            uid: uid.into(),
            failure: failure.map(str::to_owned),
            at: at(secs),
        }
    }

    #[test]
    fn trust_is_earned_by_verified_successes_in_a_row_and_reset_by_one_failure() {
        let window = Duration::from_secs(3600);
        let mut record = TrustRecord::default();
        for i in 0..4 {
            record = record.with(outcome(&format!("u{i}"), None, i), 5, window, "b");
            assert!(!record.earned, "{} verified of 5", i + 1);
        }
        record = record.with(outcome("u4", None, 4), 5, window, "b");
        assert!(record.earned, "five verified in a row");
        assert_eq!(record.with(outcome("u4", None, 5), 5, window, "b"), record, "one Remediation counts once");
        let changed = record.with(outcome("u9", None, 5), 5, window, "other");
        assert!(!changed.earned && changed.verified.len() == 1, "another spec starts from zero");
        let reset = record.with(outcome("u5", Some("verification failed"), 6), 5, window, "b");
        assert!(!reset.earned && reset.verified.is_empty(), "any failure resets it");
        assert_eq!(reset.last_reset_reason.as_deref(), Some("r-u5: verification failed"));
        assert!(reset.knows("u5"));
        assert_eq!(
            reset.with(outcome("u3", None, 3), 5, window, "b"),
            reset,
            "a success from before the reset stays out"
        );
        assert!(!reset.with(outcome("u6", None, 7), 5, window, "b").verified.is_empty(), "a later one counts");
    }

    #[test]
    fn only_successes_within_the_window_count() {
        let mut record = TrustRecord::default();
        for i in 0..3 {
            record = record.with(outcome(&format!("u{i}"), None, i * 1000), 3, Duration::from_secs(10_000), "b");
        }
        assert!(record.earned);
        assert_eq!(
            record.verified_within(Duration::from_secs(1500), at(2000).0, "b"),
            2,
            "the oldest is out of the window"
        );
        assert_eq!(record.verified_within(Duration::from_secs(1500), at(2000).0, "other"), 0);
    }
}
