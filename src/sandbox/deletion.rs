//! Deletion as the API server and its controllers finish it: finalizers, orphaning, the
//! garbage collector (background propagation), namespace and CRD cleanup.
//!
//! Contract: runs inside the request's store transaction, so a deletion and everything it
//! cascades to commit together or not at all.

use serde_json::{Value, json};

use super::meta::{CRD_CLEANUP, finalizers, meta_str, now, set_meta};
use super::resources::{Behaviour, ResourceType};
use super::status::ApiError;
use super::store::{Tx, name_of, ns_of};

/// Mark for deletion (finalizers pending) or remove. Returns (object, removed?).
pub(super) fn delete_in(
    tx: &mut Tx<'_>,
    rt: &ResourceType,
    old: &Value,
    orphan: bool,
) -> Result<(Value, bool), ApiError> {
    let ns = ns_of(old).to_owned();
    let name = name_of(old).to_owned();
    if orphan && let Some(uid) = meta_str(old, "uid") {
        release_dependents(tx, uid);
    }
    if meta_str(old, "deletionTimestamp").is_some() {
        return Ok((old.clone(), false));
    }
    let pending = !finalizers(old).is_empty() || rt.behaviour == Behaviour::Namespace;
    if !pending {
        if rt.behaviour == Behaviour::Crd {
            tx.registry.unregister_crd(old);
        }
        let gone = tx.remove(&rt.storage, &ns, &name).unwrap_or_else(|| old.clone());
        return Ok((gone, true));
    }
    let mut marked = old.clone();
    set_meta(&mut marked, "deletionTimestamp", json!(now()));
    set_meta(&mut marked, "deletionGracePeriodSeconds", json!(0));
    // As kube-apiserver does, so generation-filtered controllers see the deletion.
    if let Some(g) = old.pointer("/metadata/generation").and_then(Value::as_i64) {
        set_meta(&mut marked, "generation", json!(g.saturating_add(1)));
    }
    if rt.behaviour == Behaviour::Namespace {
        marked["status"] = json!({"phase": "Terminating"});
    }
    Ok((tx.put(&rt.storage, marked), false))
}

/// Remove ownerReferences to `uid` (orphan propagation).
fn release_dependents(tx: &mut Tx<'_>, uid: &str) {
    for storage in tx.storages() {
        for o in tx.list(&storage, None) {
            let refs = o.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
            if refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)) {
                let mut o = o;
                let kept: Vec<Value> =
                    refs.into_iter().filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid)).collect();
                set_meta(&mut o, "ownerReferences", Value::Array(kept));
                tx.put(&storage, o);
            }
        }
    }
}

/// The controllers that finish deletions: namespace and CRD cleanup, and the garbage collector
/// (background propagation: dependents whose owners are all gone are deleted).
pub(super) fn settle(tx: &mut Tx<'_>) -> Result<(), ApiError> {
    for _round in 0..16 {
        let mut changed = false;
        let registry = tx.registry.clone();
        // Namespaces being deleted: delete their content, then the namespace.
        for ns in tx.list("namespaces", None).into_iter().filter(|n| meta_str(n, "deletionTimestamp").is_some()) {
            let ns_name = name_of(&ns).to_owned();
            let contents: Vec<String> = tx.storages().into_iter().filter(|s| s != "namespaces").collect();
            for storage in &contents {
                let Some(rt) = registry.by_storage(storage) else { continue };
                for o in tx.list(storage, Some(&ns_name)) {
                    if meta_str(&o, "deletionTimestamp").is_none() {
                        delete_in(tx, &rt, &o, false)?;
                        changed = true;
                    }
                }
            }
            // Gone once nothing is left in it (objects with finalizers keep it terminating).
            if finalizers(&ns).is_empty() && contents.iter().all(|s| tx.list(s, Some(&ns_name)).is_empty()) {
                tx.remove("namespaces", "", &ns_name);
                changed = true;
            }
        }
        // CRDs being deleted: delete their objects, then release the cleanup finalizer.
        for crd in tx.list("customresourcedefinitions.apiextensions.k8s.io", None) {
            if meta_str(&crd, "deletionTimestamp").is_none() || !finalizers(&crd).iter().any(|f| f == CRD_CLEANUP) {
                continue;
            }
            let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default();
            let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default();
            let storage = format!("{plural}.{group}");
            let objs = tx.list(&storage, None);
            if let Some(rt) = registry.by_storage(&storage) {
                for o in objs.iter().filter(|o| meta_str(o, "deletionTimestamp").is_none()) {
                    delete_in(tx, &rt, o, false)?;
                    changed = true;
                }
            }
            if tx.list(&storage, None).is_empty() {
                let mut c = crd.clone();
                let rest: Vec<Value> =
                    finalizers(&crd).into_iter().filter(|f| f != CRD_CLEANUP).map(Value::String).collect();
                set_meta(&mut c, "finalizers", Value::Array(rest.clone()));
                if rest.is_empty() {
                    tx.registry.unregister_crd(&c);
                    tx.remove("customresourcedefinitions.apiextensions.k8s.io", "", name_of(&c));
                } else {
                    tx.put("customresourcedefinitions.apiextensions.k8s.io", c);
                }
                changed = true;
            }
        }
        // Garbage collection.
        if tx.has_removals() {
            let storages = tx.storages();
            let mut uids = std::collections::BTreeSet::new();
            for s in &storages {
                for o in tx.list(s, None) {
                    if let Some(u) = meta_str(&o, "uid") {
                        uids.insert(u.to_owned());
                    }
                }
            }
            for s in &storages {
                let Some(rt) = registry.by_storage(s) else { continue };
                for o in tx.list(s, None) {
                    let refs = o.pointer("/metadata/ownerReferences").and_then(Value::as_array);
                    let orphaned = refs.is_some_and(|r| {
                        !r.is_empty()
                            && r.iter().all(|r| r.get("uid").and_then(Value::as_str).is_none_or(|u| !uids.contains(u)))
                    });
                    if orphaned && meta_str(&o, "deletionTimestamp").is_none() {
                        delete_in(tx, &rt, &o, false)?;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return Ok(());
        }
    }
    Ok(())
}
