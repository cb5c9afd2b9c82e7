//! Storage: objects by (storage key, namespace, name), one global resourceVersion counter, and
//! a bounded change log that feeds watches and consistent snapshots.
//!
//! Contract: like etcd under kube-apiserver, every committed write gets the next
//! resourceVersion; changes are published to watchers in commit order. Writes run in a
//! transaction ([`Store::write`]) under one lock: a closure stages puts and removes and they
//! commit together only if it returns `Ok` and the request is not a dry run — a failing request
//! never half-applies. The log keeps the last `capacity` changes; a watch or snapshot older
//! than that is answered `410 Expired` ([`Store::compact`] drops the log on demand, as etcd
//! compaction does).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::Registry;
use super::status::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub storage: String,
    pub kind: ChangeKind,
    /// The object after the change (for Deleted: its last state, with the deleting rv).
    pub object: Value,
    /// The object before the change.
    pub prev: Option<Value>,
}

impl Change {
    pub fn namespace(&self) -> &str {
        ns_of(&self.object)
    }
}

pub fn ns_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

type Key = (String, String);
type Objects = BTreeMap<String, BTreeMap<Key, Value>>;

struct Inner {
    rv: u64,
    registry: Registry,
    objects: Objects,
    log: VecDeque<Arc<Change>>,
    capacity: usize,
    /// Changes with rv <= this are no longer in the log.
    compacted: u64,
}

/// A started watch: logged changes after the requested version, the live feed, and the
/// version the live feed starts after.
pub type Watch = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

impl Inner {
    /// Committed objects of a storage, in one namespace or all, keyed (namespace, name).
    fn objects_in(&self, storage: &str, ns: Option<&str>) -> BTreeMap<Key, Value> {
        self.objects
            .get(storage)
            .into_iter()
            .flatten()
            .filter(|(k, _)| ns.is_none_or(|n| k.0 == n))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The in-memory store.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
}

/// A write transaction; see the module contract.
pub struct Tx<'a> {
    inner: &'a Inner,
    pub registry: Registry,
    next_rv: u64,
    overlay: BTreeMap<(String, Key), Option<Value>>,
    staged: Vec<(String, Key, Option<Value>)>,
}

impl Tx<'_> {
    pub fn get(&self, storage: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (storage.to_owned(), (ns.to_owned(), name.to_owned()));
        match self.overlay.get(&key) {
            Some(v) => v.clone(),
            None => self.inner.objects.get(storage).and_then(|m| m.get(&key.1)).cloned(),
        }
    }

    /// Objects of a storage (in one namespace, or all), in (namespace, name) order.
    pub fn list(&self, storage: &str, ns: Option<&str>) -> Vec<Value> {
        let mut merged = self.inner.objects_in(storage, ns);
        for ((s, k), v) in &self.overlay {
            if s != storage || ns.is_some_and(|n| k.0 != n) {
                continue;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        merged.into_values().collect()
    }

    /// All storage keys with objects (for garbage collection and namespace cleanup).
    pub fn storages(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.objects.keys().cloned().collect();
        for (s, _) in self.overlay.keys() {
            if !keys.contains(s) {
                keys.push(s.clone());
            }
        }
        keys
    }

    /// Stage a put; the returned object carries its new resourceVersion.
    pub fn put(&mut self, storage: &str, mut obj: Value) -> Value {
        self.next_rv += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.next_rv.to_string()));
        }
        let key = (ns_of(&obj).to_owned(), name_of(&obj).to_owned());
        self.overlay.insert((storage.to_owned(), key.clone()), Some(obj.clone()));
        self.staged.push((storage.to_owned(), key, Some(obj.clone())));
        obj
    }

    /// Stage a removal; returns the object as deleted (with the deleting resourceVersion).
    pub fn remove(&mut self, storage: &str, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.get(storage, ns, name)?;
        self.next_rv += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.next_rv.to_string()));
        }
        let key = (ns.to_owned(), name.to_owned());
        self.overlay.insert((storage.to_owned(), key.clone()), None);
        self.staged.push((storage.to_owned(), key, None));
        Some(obj)
    }

    /// Has this transaction removed anything (so owners may have gone)?
    pub fn has_removals(&self) -> bool {
        self.staged.iter().any(|(_, _, v)| v.is_none())
    }
}

impl Store {
    pub fn new(capacity: usize) -> Self {
        let (changes, _) = broadcast::channel(capacity.max(16));
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                registry: Registry::default(),
                objects: Objects::new(),
                log: VecDeque::new(),
                capacity: capacity.max(1),
                compacted: 0,
            }),
            changes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; the data is still consistent because
        // writes are applied only after the closure succeeded.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Run `f` as one transaction; commit its writes unless it fails or `dry_run`.
    pub fn write<T>(&self, dry_run: bool, f: impl FnOnce(&mut Tx<'_>) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut inner = self.lock();
        let (result, staged, registry) = {
            let mut tx = Tx {
                inner: &inner,
                registry: inner.registry.clone(),
                next_rv: inner.rv,
                overlay: BTreeMap::new(),
                staged: Vec::new(),
            };
            let r = f(&mut tx);
            (r, tx.staged, tx.registry)
        };
        let out = result?;
        if dry_run {
            return Ok(out);
        }
        inner.registry = registry;
        for (storage, key, obj) in staged {
            inner.rv += 1;
            let rv = inner.rv;
            let objects = inner.objects.entry(storage.clone()).or_default();
            let prev = objects.get(&key).cloned();
            let (kind, object) = match obj {
                Some(o) => {
                    objects.insert(key, o.clone());
                    (if prev.is_some() { ChangeKind::Modified } else { ChangeKind::Added }, o)
                }
                None => {
                    objects.remove(&key);
                    let mut last = prev.clone().unwrap_or(Value::Null);
                    if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("resourceVersion".into(), json!(rv.to_string()));
                    }
                    (ChangeKind::Deleted, last)
                }
            };
            let change = Arc::new(Change { rv, storage, kind, object, prev });
            inner.log.push_back(change.clone());
            while inner.log.len() > inner.capacity {
                if let Some(old) = inner.log.pop_front() {
                    inner.compacted = old.rv;
                }
            }
            // No receivers is fine: nobody is watching.
            let _ = self.changes.send(change);
        }
        Ok(out)
    }

    /// Drop the change log up to now, as an etcd compaction does: older watches get 410.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.compacted = inner.rv;
    }

    fn too_old(rv: u64, compacted: u64) -> ApiError {
        ApiError::expired(format!("too old resource version: {rv} ({})", compacted + 1))
    }

    /// Objects of a storage at the current version, or at `at` (an older snapshot
    /// reconstructed from the log), with the list's resourceVersion.
    pub fn list(&self, storage: &str, ns: Option<&str>, at: Option<u64>) -> Result<(Vec<Value>, u64), ApiError> {
        let inner = self.lock();
        let mut objs = inner.objects_in(storage, ns);
        let Some(at) = at.filter(|at| *at < inner.rv) else { return Ok((objs.into_values().collect(), inner.rv)) };
        if at < inner.compacted {
            return Err(Self::too_old(at, inner.compacted));
        }
        for c in inner.log.iter().rev().take_while(|c| c.rv > at) {
            if c.storage != storage || ns.is_some_and(|n| c.namespace() != n) {
                continue;
            }
            let key = (c.namespace().to_owned(), name_of(&c.object).to_owned());
            match &c.prev {
                Some(p) => objs.insert(key, p.clone()),
                None => objs.remove(&key),
            };
        }
        Ok((objs.into_values().collect(), at))
    }

    pub fn get(&self, storage: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(storage).and_then(|m| m.get(&(ns.to_owned(), name.to_owned()))).cloned()
    }

    /// Start watching a storage: changes after `from` (all of them still logged), then live
    /// ones. With `from = None` the caller lists first; the returned version is where the
    /// live stream starts.
    pub fn watch(&self, from: Option<u64>) -> Result<Watch, ApiError> {
        let inner = self.lock();
        let rx = self.changes.subscribe();
        let backlog = match from {
            Some(rv) if rv < inner.compacted => return Err(Self::too_old(rv, inner.compacted)),
            Some(rv) => inner.log.iter().filter(|c| c.rv > rv).cloned().collect(),
            None => Vec::new(),
        };
        Ok((backlog, rx, inner.rv))
    }

    /// A live subscription to every change (for the workload controllers).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str, v: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"v": v}})
    }

    #[test]
    fn failed_and_dry_run_transactions_leave_nothing() {
        let s = Store::new(100);
        let rv0 = s.resource_version();
        let r: Result<(), ApiError> = s.write(false, |tx| {
            tx.put("configmaps", cm("a", "1"));
            Err(ApiError::bad_request("no"))
        });
        assert!(r.is_err());
        s.write(true, |tx| Ok(tx.put("configmaps", cm("a", "1")))).unwrap();
        assert_eq!(s.resource_version(), rv0);
        assert!(s.get("configmaps", "default", "a").is_none());
    }

    #[test]
    fn snapshots_and_compaction() {
        let s = Store::new(100);
        let a1 = s.write(false, |tx| Ok(tx.put("configmaps", cm("a", "1")))).unwrap();
        let at: u64 = a1["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        s.write(false, |tx| {
            tx.put("configmaps", cm("a", "2"));
            tx.put("configmaps", cm("b", "1"));
            Ok(())
        })
        .unwrap();
        let (then, rv) = s.list("configmaps", None, Some(at)).unwrap();
        assert_eq!(rv, at);
        assert_eq!(then.len(), 1);
        assert_eq!(then[0]["data"]["v"], "1");
        let (now, _) = s.list("configmaps", Some("default"), None).unwrap();
        assert_eq!(now.len(), 2);
        let (backlog, _, _) = s.watch(Some(at)).unwrap();
        assert_eq!(backlog.iter().map(|c| c.kind).collect::<Vec<_>>(), [ChangeKind::Modified, ChangeKind::Added]);
        assert!(backlog.windows(2).all(|w| w[0].rv < w[1].rv));
        s.compact();
        assert_eq!(s.watch(Some(at)).unwrap_err().code, 410);
        assert_eq!(s.list("configmaps", None, Some(at)).unwrap_err().code, 410);
    }
}
