//! What intake knows of the cluster: policies (validated and compiled once per change),
//! intake's Remediations, and the kill switch — kept current by watches, so a delivery is
//! planned from memory instead of listing the API server every time.
//!
//! Contract: [`Known`] is pure state with one method per watch event, plus the Remediations
//! this replica has decided to create but the watch has not shown yet (`pending`), so two
//! deliveries in quick succession never both decide to create, and rate and concurrency
//! limits count what is on its way. A pending entry leaves when the watch shows the object
//! or the create is abandoned. [`watch`] is the thin shell: it runs the three watches and
//! applies their events; intake serves only once each has listed at least once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher as watch_stream};
use tokio::sync::watch as signal;

use super::plan::{Existing, POLICY_LABEL, PolicyRef, existing_from};
use super::queue::Key;
use crate::api::policy::RemediationPolicy;
use crate::api::remediation::Remediation;
use crate::api::validate::ValidPolicy;

/// A policy as watched: its reference (for Events) and, when valid, its compiled form.
#[derive(Clone, Debug)]
pub struct KnownPolicy {
    pub reference: ObjectReference,
    pub valid: Option<PolicyRef>,
}

/// See the module docs.
#[derive(Default)]
pub struct Known {
    policies: BTreeMap<Key, KnownPolicy>,
    remediations: BTreeMap<Key, Existing>,
    /// Creates on their way: (entry, whether the API server has confirmed it).
    pending: BTreeMap<Key, (Existing, bool)>,
    pub kill_switch: bool,
    /// Rebuilt lazily after a change.
    valid: Option<Arc<Vec<PolicyRef>>>,
    existing: Option<Arc<Vec<Existing>>>,
    /// Objects listed since the watch (re)started, replacing the old set at `InitDone`.
    listing_policies: Option<BTreeMap<Key, KnownPolicy>>,
    listing_remediations: Option<BTreeMap<Key, Existing>>,
    listing_kill_switch: Option<bool>,
    /// Where a Remediation that stood aside while its alert still fires goes, once, so the
    /// alert is planned again for the other policies that match it ([`super::webhook`]).
    pub handoff: Option<tokio::sync::mpsc::Sender<Remediation>>,
    /// Remediations already handed off.
    handed_off: std::collections::BTreeSet<Key>,
}

fn key_of(meta: &kube::api::ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// Validate and compile a policy. An invalid one is kept (for Events) but never matched.
pub fn known_policy(p: &RemediationPolicy) -> Option<(Key, KnownPolicy)> {
    let (namespace, name) = key_of(&p.metadata)?;
    let reference = ObjectReference {
        api_version: Some("reflex.dev/v1alpha1".into()),
        kind: Some("RemediationPolicy".into()),
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        uid: p.metadata.uid.clone(),
        ..ObjectReference::default()
    };
    let valid = match ValidPolicy::from_spec(&p.spec) {
        Ok(policy) => Some(PolicyRef { namespace: namespace.clone(), name: name.clone(), policy }),
        Err(e) => {
            tracing::warn!(policy = %format!("{namespace}/{name}"), error = %e, "intake ignores an invalid policy");
            None
        }
    };
    Some(((namespace, name), KnownPolicy { reference, valid }))
}

fn existing_one(r: &Remediation) -> Option<(Key, Existing)> {
    let e = existing_from(std::slice::from_ref(r)).pop()?;
    Some(((e.namespace.clone(), e.name.clone()), e))
}

impl Known {
    /// Valid policies, for planning.
    pub fn policies(&mut self) -> Arc<Vec<PolicyRef>> {
        self.valid
            .get_or_insert_with(|| Arc::new(self.policies.values().filter_map(|p| p.valid.clone()).collect()))
            .clone()
    }

    /// A policy's reference, for Events.
    pub fn reference(&self, namespace: &str, name: &str) -> Option<ObjectReference> {
        self.policies.get(&(namespace.to_owned(), name.to_owned())).map(|p| p.reference.clone())
    }

    /// Intake's Remediations, the watched ones and the ones on their way.
    pub fn existing(&mut self) -> Arc<Vec<Existing>> {
        let (watched, pending) = (&self.remediations, &self.pending);
        self.existing
            .get_or_insert_with(|| {
                Arc::new(
                    watched
                        .values()
                        .chain(pending.iter().filter(|(k, _)| !watched.contains_key(*k)).map(|(_, (e, _))| e))
                        .cloned()
                        .collect(),
                )
            })
            .clone()
    }

    /// This replica is creating `e`.
    pub fn creating(&mut self, e: Existing) {
        self.pending.insert((e.namespace.clone(), e.name.clone()), (e, false));
        self.existing = None;
    }

    /// The API server has `key` (created, or it existed): it stays known until the watch
    /// shows it, or a relist does not.
    pub fn confirm(&mut self, key: &Key) {
        if let Some((_, confirmed)) = self.pending.get_mut(key) {
            *confirmed = true;
        }
    }

    /// Whether `key` is a create this replica has queued but the API server has not
    /// confirmed: a delivery observing it must wait for the create's outcome.
    pub fn unconfirmed(&self, key: &Key) -> bool {
        !self.remediations.contains_key(key) && self.pending.get(key).is_some_and(|(_, confirmed)| !confirmed)
    }

    /// The create of `key` failed or was abandoned (target missing, name taken, an API
    /// error): the next delivery plans it afresh.
    pub fn abandon(&mut self, key: &Key) {
        if self.pending.remove(key).is_some() {
            self.existing = None;
        }
    }

    pub fn policy_event(&mut self, event: Event<RemediationPolicy>) {
        match event {
            Event::Init => self.listing_policies = Some(BTreeMap::new()),
            Event::InitApply(p) => {
                if let (Some(listing), Some((k, v))) = (self.listing_policies.as_mut(), known_policy(&p)) {
                    listing.insert(k, v);
                }
            }
            Event::InitDone => {
                if let Some(listing) = self.listing_policies.take() {
                    self.policies = listing;
                }
            }
            Event::Apply(p) => {
                if let Some((k, v)) = known_policy(&p) {
                    self.policies.insert(k, v);
                }
            }
            Event::Delete(p) => {
                if let Some(k) = key_of(&p.metadata) {
                    self.policies.remove(&k);
                }
            }
        }
        self.valid = None;
    }

    pub fn remediation_event(&mut self, event: Event<Remediation>) {
        match event {
            Event::Init => self.listing_remediations = Some(BTreeMap::new()),
            Event::InitApply(r) => {
                self.hand_off(&r);
                if let (Some(listing), Some((k, v))) = (self.listing_remediations.as_mut(), existing_one(&r)) {
                    listing.insert(k, v);
                }
            }
            Event::InitDone => {
                if let Some(listing) = self.listing_remediations.take() {
                    // Confirmed but not listed: deleted while the watch was away.
                    self.pending.retain(|k, (_, confirmed)| !*confirmed && !listing.contains_key(k));
                    self.remediations = listing;
                }
            }
            Event::Apply(r) => {
                self.hand_off(&r);
                if let Some((k, v)) = existing_one(&r) {
                    self.pending.remove(&k);
                    self.remediations.insert(k, v);
                }
            }
            Event::Delete(r) => {
                if let Some(k) = key_of(&r.metadata) {
                    self.pending.remove(&k);
                    self.remediations.remove(&k);
                    self.handed_off.remove(&k);
                }
            }
        }
        self.existing = None;
    }

    /// Hands `r` off (once) when it stood aside while its alert still fires.
    fn hand_off(&mut self, r: &Remediation) {
        let firing = r
            .status
            .as_ref()
            .and_then(|s| s.alert.as_ref())
            .is_some_and(|a| a.state == crate::api::remediation::AlertState::Firing);
        if !firing || !super::plan::stood_aside(r) {
            return;
        }
        if let (Some(tx), Some(key)) = (&self.handoff, key_of(&r.metadata))
            && !self.handed_off.contains(&key)
        {
            match tx.try_send(r.clone()) {
                Ok(()) => {
                    self.handed_off.insert(key);
                }
                Err(e) => {
                    tracing::warn!(remediation = %key.1, error = %e, "hand-off queue full; the alert's next delivery plans it")
                }
            }
        }
    }

    pub fn kill_switch_event(&mut self, event: Event<ConfigMap>) {
        let on = |c: &ConfigMap| c.data.as_ref().and_then(|d| d.get("killSwitch")).is_some_and(|v| v.trim() == "true");
        match event {
            // Off unless the listing shows it on (deleted while the watch was away: off).
            Event::Init => self.listing_kill_switch = Some(false),
            Event::InitApply(c) => self.listing_kill_switch = Some(on(&c)),
            Event::InitDone => self.kill_switch = self.listing_kill_switch.take().unwrap_or(false),
            Event::Apply(c) => self.kill_switch = on(&c),
            Event::Delete(_) => self.kill_switch = false,
        }
    }
}

/// Shared, locked [`Known`].
pub type Shared = Arc<Mutex<Known>>;

pub fn lock(known: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Run one watch, applying its events; marks `synced` after its first complete listing.
async fn run<K, F>(api: Api<K>, config: watcher::Config, known: Shared, synced: signal::Sender<bool>, apply: F)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&mut Known, Event<K>),
{
    let what = std::any::type_name::<K>().rsplit("::").next().unwrap_or("object");
    let mut stream = std::pin::pin!(watch_stream(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(e) => {
                let done = matches!(e, Event::InitDone);
                apply(&mut lock(&known), e);
                if done {
                    synced.send_replace(true);
                }
            }
            Err(e) => tracing::warn!(watch = what, error = %e, "intake's watch failed; retrying with backoff"),
        }
    }
}

/// The watches intake plans from. Returns the tasks and a signal that is true once all three
/// have listed.
pub fn watch(
    client: &kube::Client,
    known: &Shared,
    kill_switch: Option<&(String, String)>,
) -> (Vec<tokio::task::JoinHandle<()>>, signal::Receiver<bool>) {
    let (all_tx, all_rx) = signal::channel(false);
    let (p_tx, mut p_rx) = signal::channel(false);
    let (r_tx, mut r_rx) = signal::channel(false);
    let (k_tx, mut k_rx) = signal::channel(kill_switch.is_none());
    let mut tasks = vec![
        tokio::spawn(run(
            Api::<RemediationPolicy>::all(client.clone()),
            watcher::Config::default(),
            known.clone(),
            p_tx,
            Known::policy_event,
        )),
        tokio::spawn(run(
            Api::<Remediation>::all(client.clone()),
            watcher::Config::default().labels(POLICY_LABEL),
            known.clone(),
            r_tx,
            Known::remediation_event,
        )),
    ];
    if let Some((ns, name)) = kill_switch {
        tasks.push(tokio::spawn(run(
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            known.clone(),
            k_tx,
            Known::kill_switch_event,
        )));
    }
    tasks.push(tokio::spawn(async move {
        for rx in [&mut p_rx, &mut r_rx, &mut k_rx] {
            if rx.wait_for(|s| *s).await.is_err() {
                return;
            }
        }
        all_tx.send_replace(true);
        // Keep the signal's sender alive for as long as intake runs.
        std::future::pending::<()>().await;
    }));
    (tasks, all_rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rem(name: &str, phase: Option<&str>) -> Remediation {
        let mut v = json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "namespace": "shop", "labels": {POLICY_LABEL: "oom", "reflex.dev/target": "checkout"},
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"policyRef": {"name": "oom"}, "alert": {"name": "A", "fingerprint": "f", "labels": {}, "annotations": {},
                "startsAt": "2026-01-01T00:00:00Z"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"}}});
        if let Some(p) = phase {
            v["status"] = json!({"phase": p});
        }
        serde_json::from_value(v).unwrap()
    }

    fn pending(name: &str) -> Existing {
        existing_one(&rem(name, None)).unwrap().1
    }

    #[test]
    fn a_pending_create_counts_until_the_watch_shows_it() {
        let mut k = Known::default();
        k.creating(pending("oom-checkout-1"));
        assert_eq!(k.existing().len(), 1);
        k.remediation_event(Event::Apply(rem("oom-checkout-1", Some("Diagnosing"))));
        let all = k.existing();
        assert_eq!(all.len(), 1, "not counted twice");
        assert!(all[0].phase.is_some(), "the watched copy wins");
        k.creating(pending("oom-checkout-2"));
        k.abandon(&("shop".into(), "oom-checkout-2".into()));
        assert_eq!(k.existing().len(), 1);
    }

    #[test]
    fn a_relist_replaces_the_set_but_keeps_creates_in_flight() {
        let mut k = Known::default();
        k.remediation_event(Event::Apply(rem("oom-checkout-1", Some("Succeeded"))));
        k.creating(pending("oom-checkout-2"));
        // Created and confirmed, then deleted while the watch was away.
        k.creating(pending("oom-checkout-9"));
        k.confirm(&("shop".into(), "oom-checkout-9".into()));
        assert!(!k.unconfirmed(&("shop".into(), "oom-checkout-9".into())));
        assert!(k.unconfirmed(&("shop".into(), "oom-checkout-2".into())));
        k.remediation_event(Event::Init);
        k.remediation_event(Event::InitApply(rem("oom-checkout-3", None)));
        assert_eq!(k.existing().len(), 3, "the old set holds until the listing is complete");
        k.remediation_event(Event::InitDone);
        let names: Vec<String> = k.existing().iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, ["oom-checkout-3", "oom-checkout-2"], "deleted while away: gone; in flight: kept");
    }

    #[test]
    fn the_kill_switch_follows_its_configmap() {
        let mut k = Known::default();
        let cm = |v: &str| -> ConfigMap {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "data": {"killSwitch": v}})).unwrap()
        };
        k.kill_switch_event(Event::Init);
        k.kill_switch_event(Event::InitApply(cm(" true ")));
        k.kill_switch_event(Event::InitDone);
        assert!(k.kill_switch);
        k.kill_switch_event(Event::Apply(cm("false")));
        assert!(!k.kill_switch);
        k.kill_switch_event(Event::Apply(cm("true")));
        k.kill_switch_event(Event::Delete(cm("true")));
        assert!(!k.kill_switch);
        // Turned on, then deleted while the watch was away: the relist turns it off.
        k.kill_switch_event(Event::Apply(cm("true")));
        k.kill_switch_event(Event::Init);
        assert!(k.kill_switch, "holds until the listing is complete");
        k.kill_switch_event(Event::InitDone);
        assert!(!k.kill_switch);
    }

    #[test]
    fn invalid_policies_are_known_for_events_but_never_matched() {
        let mut k = Known::default();
        let p: RemediationPolicy = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "bad", "namespace": "shop", "uid": "u1"},
            "spec": {"match": {"alertnames": ["A"], "matchers": ["x=~\"(\""]}, "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
                "playbook": "p", "trust": {"level": "auto"},
                "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}}}))
        .unwrap();
        k.policy_event(Event::Apply(p));
        assert!(k.policies().is_empty());
        assert_eq!(k.reference("shop", "bad").and_then(|r| r.uid), Some("u1".into()));
    }
}
