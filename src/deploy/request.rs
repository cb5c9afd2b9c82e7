//! The one request that deploys a proposal, built without touching the cluster. CI sends it
//! with `dryRun=All`; deploy sends it for real — so what deploys is exactly what was tested.
//!
//! Contract: pure. A strategic-merge patch without directives or deletions becomes a forced
//! server-side apply configuration under the Remediation's own field manager
//! (`reflex-<name>-<uid hash>`: it takes ownership of exactly the fields it changes, and no other
//! Remediation's); any other patch is sent as its own patch type under the same manager.

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::api::playbook::PatchType;
use crate::api::remediation::{Proposal, Remediation};
use crate::api::{ErrorCategory, change_manager};
use crate::ports::StageError;

/// The request that deploys `proposal` (with `dry_run`, the request CI sends): a forced
/// server-side apply for plain strategic patches, otherwise the patch as its own type.
pub fn request(
    rem: &Remediation,
    proposal: &Proposal,
    dry_run: bool,
) -> Result<(PatchParams, Patch<Value>), StageError> {
    let manager = field_manager(rem);
    if proposal.patch_type == PatchType::Strategic && !has_directives(&proposal.patch.0) {
        let mut params = PatchParams::apply(&manager).force();
        params.dry_run = dry_run;
        return Ok((params, Patch::Apply(apply_config(rem, &proposal.patch.0))));
    }
    let params = PatchParams { field_manager: Some(manager), dry_run, ..PatchParams::default() };
    Ok((params, as_patch(proposal)?))
}

/// The field manager `rem`'s change is applied (and rolled back) under: its own, derived from
/// its name and uid ([`change_manager`]) — never read from status.
pub fn field_manager(rem: &Remediation) -> String {
    change_manager(rem.metadata.name.as_deref().unwrap_or_default(), rem.metadata.uid.as_deref().unwrap_or_default())
}

/// The kube patch for a proposal, as its own patch type.
pub fn as_patch(p: &Proposal) -> Result<Patch<Value>, StageError> {
    Ok(match p.patch_type {
        PatchType::Strategic => Patch::Strategic(p.patch.0.clone()),
        PatchType::Merge => Patch::Merge(p.patch.0.clone()),
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(p.patch.0.clone()).map_err(|e| {
                StageError::new(ErrorCategory::InvalidSpec, format!("the proposal is not a JSON patch: {e}"))
            })?;
            return Ok(Patch::Json(ops));
        }
    })
}

/// Does a strategic patch use directives or deletions that an apply configuration cannot say?
pub fn has_directives(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k.starts_with('$') || v.is_null() || has_directives(v)),
        Value::Array(items) => items.iter().any(has_directives),
        _ => false,
    }
}

/// `body` as an apply configuration for the Remediation's target: its apiVersion and kind,
/// what the body says about metadata (labels, annotations), and the target's identity pinned.
pub fn apply_config(rem: &Remediation, body: &Value) -> Value {
    let mut config = body.clone();
    if let Some(m) = config.as_object_mut() {
        m.insert("apiVersion".into(), json!(rem.spec.target.api_version));
        m.insert("kind".into(), json!(rem.spec.target.kind.as_str()));
        let mut meta = m.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        meta.insert("name".into(), json!(rem.spec.target.name));
        meta.insert("namespace".into(), json!(rem.metadata.namespace));
        m.insert("metadata".into(), Value::Object(meta));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_and_deletions_need_a_plain_patch() {
        assert!(has_directives(&json!({"spec": {"x": null}})));
        assert!(has_directives(&json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})));
        assert!(!has_directives(&json!({"spec": {"replicas": 3}})));
    }
}
