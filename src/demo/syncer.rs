//! The GitOps controller stand-in (for the GitOps tests and `reflex demo --scenario gitops`):
//! it plays Argo CD's or Flux's part — reads every manifest on a branch of a bare repository
//! and server-side applies it to the cluster under its own field manager. No Kustomize, no
//! Helm, no pruning: plain YAML manifests only. It is not a GitOps controller and says so.

use std::path::Path;
use std::process::Command;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

/// The field manager the stand-in applies as.
pub const MANAGER: &str = "gitops-controller";

fn git(bare: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(bare)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Every manifest (apiVersion, kind and name set) in the YAML files on `branch`, with the
/// commit it was read at.
///
/// # Errors
/// git fails.
pub fn manifests(bare: &Path, branch: &str) -> Result<(String, Vec<Value>), String> {
    let commit = git(bare, &["rev-parse", &format!("refs/heads/{branch}")])?.trim().to_owned();
    let mut out = Vec::new();
    for file in git(bare, &["ls-tree", "-r", "--name-only", &commit])?.lines() {
        if !(file.ends_with(".yaml") || file.ends_with(".yml")) || file.ends_with("kustomization.yaml") {
            continue;
        }
        let text = git(bare, &["show", &format!("{commit}:{file}")])?;
        for (s, e) in crate::gitops::manifest::documents(&text) {
            if let Ok(doc) = serde_saphyr::from_str::<Value>(&text[s..e])
                && doc.get("apiVersion").is_some()
                && doc.get("kind").is_some()
                && doc.pointer("/metadata/name").is_some()
            {
                out.push(doc);
            }
        }
    }
    Ok((commit, out))
}

/// Applies every manifest on `branch` to `namespace` (or the manifest's own); returns the
/// commit it synced.
///
/// # Errors
/// git or an apply fails.
pub async fn sync(client: &kube::Client, bare: &Path, branch: &str, namespace: &str) -> Result<String, String> {
    let (commit, docs) = manifests(bare, branch)?;
    for doc in docs {
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let (resource, _) = kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .map_err(|e| format!("{kind}: {e}"))?;
        let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(namespace).to_owned();
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource);
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&doc))
            .await
            .map_err(|e| format!("applying {kind} {ns}/{name}: {e}"))?;
    }
    Ok(commit)
}
