//! Discovery without configuration: the agents Reflex finds, and their skills.
//!
//! Contract: [`Discovery::run`] watches Services and keeps, for every one annotated
//! `reflex.dev/a2a-agent: "true"`, its agent card in the [`Registry`] — fetched from the
//! Service's address at `/.well-known/agent-card.json` when the Service appears or changes,
//! and again every refresh interval, so a card that changes its skills is re-read. A card
//! that cannot be fetched is `Unreachable`, one that does not parse or does not hold up
//! ([`check_card`]: a JSON-RPC 1.x interface on the very address Reflex discovered, skills
//! with ids) is `Invalid`; both stay listed with the reason. After each pass the policies
//! that delegate get a `DelegatesAvailable` condition saying whether an agent with each
//! delegated skill is ready, and if not why. Reflex calls an agent only at the address it
//! discovered: a card cannot redirect calls elsewhere. The annotation is all an agent needs;
//! `reflex.dev/a2a-port` picks the Service port when it has several (else the port named
//! `a2a`, `http`, or the first).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use a2a::AgentCard;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::RemediationPolicy;

/// The annotation that makes a Service's agent discoverable.
pub const AGENT_ANNOTATION: &str = "reflex.dev/a2a-agent";
/// The annotation naming the Service port the agent listens on.
pub const PORT_ANNOTATION: &str = "reflex.dev/a2a-port";
/// The annotation listing the other namespaces whose policies may delegate to the agent
/// (comma-separated; a policy in the agent's own namespace always may).
pub const ALLOWED_NAMESPACES_ANNOTATION: &str = "reflex.dev/a2a-allowed-namespaces";
/// Most skills kept from a card.
const MAX_SKILLS: usize = 64;
/// Longest condition message.
const MAX_MESSAGE: usize = 1000;
/// Least time between two passes a Service change triggers.
const MIN_PASS_INTERVAL: Duration = Duration::from_secs(1);
/// The condition on a delegating policy.
pub const CONDITION: &str = "DelegatesAvailable";
/// The field manager of that condition.
const MANAGER: &str = "reflex-a2a";
/// Largest card read.
const MAX_CARD: usize = 256 * 1024;
/// How long a card fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a Service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Addressing {
    /// `http://<name>.<namespace>.svc:<port>` (the operator runs in the cluster).
    #[default]
    ClusterDns,
    /// `http://127.0.0.1:<port>`: the operator runs outside the cluster with the Services'
    /// ports forwarded to loopback (`kubectl port-forward`), as in development and the demo.
    Loopback,
}

/// Whether an agent can be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum AgentState {
    Ready,
    /// The card could not be fetched.
    Unreachable,
    /// The card was fetched and is not usable.
    Invalid,
}

/// One discovered agent.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub namespace: String,
    pub service: String,
    /// Where Reflex reaches it (the discovered address).
    pub url: String,
    pub state: AgentState,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The card's name and description.
    pub name: String,
    pub description: String,
    /// Skill ids.
    pub skills: Vec<String>,
    /// Other namespaces whose policies may delegate to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// When the card was last read.
    pub checked_at: String,
    /// The card, when it is valid.
    #[serde(skip)]
    pub card: Option<AgentCard>,
}

impl Agent {
    /// `namespace/service`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.service)
    }

    /// The JSON-RPC endpoint to call (on the discovered address).
    pub fn endpoint(&self) -> Option<String> {
        let card = self.card.as_ref()?;
        card.supported_interfaces
            .iter()
            .find(|i| i.protocol_binding == a2a::TRANSPORT_PROTOCOL_JSONRPC)
            .map(|i| i.url.clone())
    }
}

/// The agents discovered, by `namespace/service`.
#[derive(Default)]
pub struct Registry {
    agents: RwLock<BTreeMap<String, Agent>>,
}

impl Registry {
    /// Every agent, in key order.
    pub fn agents(&self) -> Vec<Agent> {
        self.agents.read().map(|a| a.values().cloned().collect()).unwrap_or_default()
    }

    /// The agent at `namespace/service`.
    pub fn agent(&self, namespace: &str, service: &str) -> Option<Agent> {
        self.agents.read().ok()?.get(&format!("{namespace}/{service}")).cloned()
    }

    fn put(&self, agent: Agent) {
        if let Ok(mut a) = self.agents.write() {
            let key = agent.key();
            let changed = a.get(&key).is_none_or(|old| old.skills != agent.skills || old.state != agent.state);
            if changed {
                tracing::info!(agent = %key, state = ?agent.state, skills = ?agent.skills, reason = ?agent.reason, "A2A: agent card read");
            }
            a.insert(key, agent);
        }
    }

    fn keep_only(&self, keys: &std::collections::BTreeSet<String>) {
        if let Ok(mut a) = self.agents.write() {
            a.retain(|k, _| {
                let keep = keys.contains(k);
                if !keep {
                    tracing::info!(agent = %k, "A2A: agent gone (Service deleted or no longer annotated)");
                }
                keep
            });
        }
    }

    /// The agent a delegation from a policy in `namespace` goes to: the pinned one (in
    /// another namespace only when that agent's Service allows `namespace`), or the one ready
    /// agent in `namespace` that lists `skill` (two are ambiguous: the policy pins one); `Err`
    /// says why there is none.
    pub fn find(&self, namespace: &str, pinned: Option<(&str, &str)>, skill: &str) -> Result<Agent, String> {
        let agents = self.agents();
        if let Some((ns, name)) = pinned
            && ns != namespace
            && let Some(a) = agents.iter().find(|a| a.namespace == ns && a.service == name)
            && !a.allowed_namespaces.iter().any(|n| n == namespace)
        {
            return Err(format!(
                "agent {ns}/{name} does not take delegations from namespace {namespace} (its Service's {ALLOWED_NAMESPACES_ANNOTATION} does not list it)"
            ));
        }
        let candidates: Vec<&Agent> = match pinned {
            Some((ns, name)) => agents.iter().filter(|a| a.namespace == ns && a.service == name).collect(),
            None => agents.iter().filter(|a| a.namespace == namespace).collect(),
        };
        if candidates.is_empty() {
            return Err(match pinned {
                Some((ns, name)) => {
                    format!("no agent discovered at Service {ns}/{name} (annotate it {AGENT_ANNOTATION}: \"true\")")
                }
                None => format!(
                    "no agent discovered in namespace {namespace} (annotate its Service {AGENT_ANNOTATION}: \"true\")"
                ),
            });
        }
        let ready: Vec<&&Agent> =
            candidates.iter().filter(|a| a.state == AgentState::Ready && a.skills.iter().any(|s| s == skill)).collect();
        match ready.as_slice() {
            [one] => return Ok((**one).clone()),
            [first, second, ..] => {
                return Err(format!(
                    "ambiguous: {} and {} both list skill {skill:?}; pin one with the policy's delegate agent",
                    first.key(),
                    second.key()
                ));
            }
            [] => {}
        }
        let why: Vec<String> = candidates
            .iter()
            .map(|a| match (&a.state, &a.reason) {
                (AgentState::Ready, _) => format!("{} lists skills {:?}, not {skill:?}", a.key(), a.skills),
                (state, reason) => format!("{} is {state:?}: {}", a.key(), reason.as_deref().unwrap_or_default()),
            })
            .collect();
        Err(format!("no ready agent with skill {skill:?}: {}", why.join("; ")))
    }
}

impl crate::mcp::server::AgentDirectory for Registry {
    fn agents(&self) -> Vec<crate::mcp::schema::AgentSummary> {
        self.agents()
            .into_iter()
            .map(|a| crate::mcp::schema::AgentSummary {
                uri: format!("agent://{}/{}", a.namespace, a.service),
                state: format!("{:?}", a.state),
                namespace: a.namespace,
                service: a.service,
                name: a.name,
                description: a.description,
                url: a.url,
                reason: a.reason,
                skills: a.skills,
                checked_at: a.checked_at,
            })
            .collect()
    }
}

/// Why a card is not usable, if it is not: it needs a JSON-RPC interface of A2A 1.x whose URL
/// is on `base` (the address Reflex discovered; a card cannot send Reflex elsewhere), and
/// skills with ids. Pure.
pub fn check_card(card: &AgentCard, base: &str) -> Result<(), String> {
    let Some(interface) =
        card.supported_interfaces.iter().find(|i| i.protocol_binding == a2a::TRANSPORT_PROTOCOL_JSONRPC)
    else {
        return Err("the card offers no JSONRPC interface".to_owned());
    };
    if !interface.protocol_version.trim().starts_with("1.") && interface.protocol_version.trim() != "1" {
        return Err(format!("the JSONRPC interface speaks A2A {}, not 1.x", interface.protocol_version));
    }
    let origin = |u: &str| {
        reqwest::Url::parse(u)
            .ok()
            .map(|u| (u.scheme().to_owned(), u.host_str().map(str::to_owned), u.port_or_known_default()))
    };
    if origin(&interface.url).is_none() || origin(&interface.url) != origin(base) {
        return Err(format!(
            "the card's interface {} is not on the Service's address {base}; Reflex calls an agent only where it found it",
            interface.url
        ));
    }
    if card.skills.is_empty() || card.skills.iter().any(|s| s.id.trim().is_empty()) {
        return Err("the card lists no skills, or a skill without an id".to_owned());
    }
    Ok(())
}

/// The base URL of an annotated Service's agent, or why there is none.
pub fn address_of(service: &Service, addressing: Addressing) -> Result<String, String> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    // An agent runs in the cluster, behind a selector: an ExternalName Service, or one whose
    // endpoints anyone who may write them points anywhere, is not followed.
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName")
        || spec.and_then(|s| s.selector.as_ref()).is_none_or(BTreeMap::is_empty)
    {
        return Err("an agent's Service must select its Pods (not ExternalName, not selectorless)".to_owned());
    }
    let ports = service.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let wanted = service.metadata.annotations.as_ref().and_then(|a| a.get(PORT_ANNOTATION)).cloned();
    let port = match &wanted {
        Some(w) => ports.iter().find(|p| p.name.as_deref() == Some(w.as_str()) || p.port.to_string() == *w),
        None => ports
            .iter()
            .find(|p| p.name.as_deref() == Some("a2a"))
            .or_else(|| ports.iter().find(|p| p.name.as_deref() == Some("http")))
            .or_else(|| ports.first()),
    }
    .ok_or_else(|| match &wanted {
        Some(w) => format!("the Service has no port {w:?} ({PORT_ANNOTATION})"),
        None => "the Service has no ports".to_owned(),
    })?;
    Ok(match addressing {
        Addressing::ClusterDns => format!("http://{name}.{namespace}.svc:{}", port.port),
        Addressing::Loopback => format!("http://127.0.0.1:{}", port.port),
    })
}

fn annotated(service: &Service) -> bool {
    service.metadata.annotations.as_ref().and_then(|a| a.get(AGENT_ANNOTATION)).is_some_and(|v| v == "true")
}

/// Reads the card of `service` (one pass; used by the watch and by `reflex agents`).
pub async fn read_agent(http: &reqwest::Client, service: &Service, addressing: Addressing) -> Agent {
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut agent = Agent {
        namespace,
        service: name,
        url: String::new(),
        state: AgentState::Unreachable,
        reason: None,
        name: String::new(),
        description: String::new(),
        skills: Vec::new(),
        allowed_namespaces: service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ALLOWED_NAMESPACES_ANNOTATION))
            .map(|v| v.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).take(64).collect())
            .unwrap_or_default(),
        checked_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        card: None,
    };
    let base = match address_of(service, addressing) {
        Ok(b) => b,
        Err(why) => {
            agent.state = AgentState::Invalid;
            agent.reason = Some(why);
            return agent;
        }
    };
    agent.url.clone_from(&base);
    let body = match fetch(http, &format!("{base}{}", a2a_server::WELL_KNOWN_AGENT_CARD_PATH)).await {
        Ok(b) => b,
        Err(why) => {
            agent.reason = Some(why);
            return agent;
        }
    };
    let card: AgentCard = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            agent.state = AgentState::Invalid;
            agent.reason = Some(format!("the card does not parse as an A2A 1.0 agent card: {e}"));
            return agent;
        }
    };
    agent.name = card.name.chars().take(200).collect();
    agent.description = card.description.chars().take(500).collect();
    agent.skills = card.skills.iter().take(MAX_SKILLS).map(|s| s.id.chars().take(128).collect()).collect();
    match check_card(&card, &base) {
        Ok(()) => {
            agent.state = AgentState::Ready;
            agent.card = Some(card);
        }
        Err(why) => {
            agent.state = AgentState::Invalid;
            agent.reason = Some(why);
        }
    }
    agent
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut resp = tokio::time::timeout(FETCH_TIMEOUT, http.get(url).send())
        .await
        .map_err(|_| format!("{url} did not answer within {}s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_CARD {
                return Err(format!("{url}: the card is over {} KiB", MAX_CARD / 1024));
            }
        }
        Ok(())
    };
    tokio::time::timeout(FETCH_TIMEOUT, read)
        .await
        .map_err(|_| format!("{url}: the card did not arrive in time"))??;
    Ok(body)
}

/// One discovery pass (for `reflex agents`): the annotated Services in `namespace` (every
/// namespace when none) as `client` sees them, each with its card read.
///
/// # Errors
/// The Services cannot be listed.
pub async fn discover_once(
    client: &kube::Client,
    namespace: Option<&str>,
    addressing: Addressing,
) -> Result<Vec<Agent>, kube::Error> {
    let api: Api<Service> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let services = api.list(&Default::default()).await?.items;
    let http = crate::egress::client(Some(FETCH_TIMEOUT)).map_err(|e| kube::Error::Service(Box::new(e)))?;
    let annotated: Vec<&Service> = services.iter().filter(|s| annotated(s)).collect();
    Ok(futures::future::join_all(annotated.into_iter().map(|s| read_agent(&http, s, addressing))).await)
}

/// `reflex agents`' table. Pure.
pub fn table(agents: &[Agent]) -> String {
    let mut out = format!("{:<32} {:<12} {:<40} {:<36} REASON\n", "AGENT", "STATE", "SKILLS", "URL");
    for a in agents {
        out.push_str(&format!(
            "{:<32} {:<12} {:<40} {:<36} {}\n",
            a.key(),
            format!("{:?}", a.state),
            a.skills.join(","),
            a.url,
            a.reason.as_deref().unwrap_or_default()
        ));
    }
    out
}

/// The watch that keeps the registry.
pub struct Discovery {
    pub client: kube::Client,
    pub registry: Arc<Registry>,
    pub addressing: Addressing,
    /// How often every card is read again.
    pub refresh: Duration,
    /// Whether this process writes the delegating policies' conditions (the controller role
    /// does; the admission policy lets only it write status).
    pub publish: bool,
}

impl Discovery {
    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let http = match crate::egress::client(Some(FETCH_TIMEOUT)) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "A2A discovery is off: no HTTP client");
                return;
            }
        };
        let (store, writer) = reflector::store::<Service>();
        let mut changes =
            reflector(writer, watcher(Api::<Service>::all(self.client.clone()), watcher::Config::default()))
                .default_backoff()
                .applied_objects()
                .boxed();
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pass = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {
                    self.pass(&http, &store.state()).await;
                    last_pass = tokio::time::Instant::now();
                }
                change = changes.next() => match change {
                    Some(Ok(service)) => {
                        let known = self.registry.agent(
                            service.metadata.namespace.as_deref().unwrap_or_default(),
                            service.metadata.name.as_deref().unwrap_or_default(),
                        ).is_some();
                        // A change is looked at now, at most once a second (the timer catches
                        // the rest): flapping an annotation cannot make the operator spin.
                        if (annotated(&service) || known) && last_pass.elapsed() >= MIN_PASS_INTERVAL {
                            self.pass(&http, &store.state()).await;
                            last_pass = tokio::time::Instant::now();
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "A2A discovery: watch error (retrying)"),
                    None => return,
                },
            }
        }
    }

    /// Reads every annotated Service's card, drops the agents whose Service is gone, and
    /// updates the delegating policies' conditions.
    async fn pass(&self, http: &reqwest::Client, services: &[Arc<Service>]) {
        let annotated: Vec<&Arc<Service>> = services.iter().filter(|s| annotated(s)).collect();
        let agents = futures::future::join_all(annotated.iter().map(|s| read_agent(http, s, self.addressing))).await;
        let keys = agents.iter().map(Agent::key).collect();
        for agent in agents {
            self.registry.put(agent);
        }
        self.registry.keep_only(&keys);
        if !self.publish {
            return;
        }
        if let Err(e) = publish_conditions(&self.client, &self.registry).await {
            tracing::debug!(error = %e, "A2A discovery: could not update the delegating policies' conditions");
        }
    }
}

/// Whether every step `policy` delegates has a ready agent: (status, reason, message). Pure.
pub fn availability(registry: &Registry, policy: &RemediationPolicy) -> Option<(bool, &'static str, String)> {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    let delegate = policy.spec.delegate.as_ref()?;
    let steps = [("diagnose", delegate.diagnose.as_ref()), ("propose", delegate.propose.as_ref())];
    let mut ok = true;
    let mut reason = "AgentsReady";
    let mut lines = Vec::new();
    for (step, d) in steps.into_iter().filter_map(|(s, d)| d.map(|d| (s, d))) {
        let pinned = d.agent.as_deref().map(|a| a.split_once('/').unwrap_or((namespace, a)));
        match registry.find(namespace, pinned, &d.skill) {
            Ok(a) => lines.push(format!("{step}: {} ({})", a.key(), d.skill)),
            Err(why) => {
                ok = false;
                let unreachable = why.contains("Unreachable");
                let invalid = why.contains("Invalid");
                reason = if unreachable {
                    "CardUnreachable"
                } else if invalid {
                    "CardInvalid"
                } else {
                    "NoAgent"
                };
                lines.push(format!("{step}: {why}"));
            }
        }
    }
    Some((ok, reason, lines.join("; ")))
}

/// Sets `DelegatesAvailable` on every policy that delegates, where it changed (a policy that
/// cannot be written is logged, and the others still are).
async fn publish_conditions(client: &kube::Client, registry: &Registry) -> Result<(), kube::Error> {
    let policies = Api::<RemediationPolicy>::all(client.clone()).list(&Default::default()).await?;
    for policy in &policies.items {
        let Some((ok, reason, message)) = availability(registry, policy) else { continue };
        let message: String = message.chars().take(MAX_MESSAGE).collect();
        let status = if ok { "True" } else { "False" };
        let current = policy.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION));
        if current.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
            continue;
        }
        if !ok {
            tracing::warn!(policy = %format!("{}/{}", policy.metadata.namespace.as_deref().unwrap_or_default(), policy.metadata.name.as_deref().unwrap_or_default()), %reason, %message, "A2A: a delegating policy has no ready agent");
        }
        let condition = json!({"type": CONDITION, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            "observedGeneration": policy.metadata.generation});
        let body = json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": policy.metadata.name}, "status": {"conditions": [condition]}});
        let written = Api::<RemediationPolicy>::namespaced(
            client.clone(),
            policy.metadata.namespace.as_deref().unwrap_or_default(),
        )
        .patch_status(
            policy.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await;
        if let Err(e) = written {
            tracing::debug!(policy = ?policy.metadata.name, error = %e, "A2A: could not write a policy's DelegatesAvailable condition");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(url: &str, version: &str, skills: &[&str]) -> AgentCard {
        serde_json::from_value(json!({"name": "peer", "description": "d", "version": "1",
            "supportedInterfaces": [{"url": url, "protocolBinding": "JSONRPC", "protocolVersion": version}],
            "capabilities": {}, "defaultInputModes": [], "defaultOutputModes": [],
            "skills": skills.iter().map(|s| json!({"id": s, "name": s, "description": "", "tags": []})).collect::<Vec<_>>()}))
        .unwrap()
    }

    #[test]
    fn a_card_must_point_at_the_discovered_address_and_speak_one_point_x() {
        let base = "http://peer.shop.svc:8080";
        assert_eq!(check_card(&card("http://peer.shop.svc:8080/a2a", "1.0", &["diagnose"]), base), Ok(()));
        for (c, why) in [
            (card("http://169.254.169.254/", "1.0", &["diagnose"]), "not on the Service's address"),
            (card("http://peer.shop.svc:9090/", "1.0", &["diagnose"]), "not on the Service's address"),
            (card("http://peer.shop.svc:8080/", "0.3", &["diagnose"]), "not 1.x"),
            (card("http://peer.shop.svc:8080/", "1.0", &[]), "no skills"),
        ] {
            let e = check_card(&c, base).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_port_comes_from_the_annotation_or_its_name() {
        let svc = |annotations: serde_json::Value, ports: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": "peer", "namespace": "shop", "annotations": annotations},
                "spec": {"selector": {"app": "peer"}, "ports": ports}}),
            )
            .unwrap()
        };
        let two = json!([{"name": "metrics", "port": 9090}, {"name": "a2a", "port": 8080}]);
        assert_eq!(
            address_of(&svc(json!({}), two.clone()), Addressing::ClusterDns).unwrap(),
            "http://peer.shop.svc:8080"
        );
        assert_eq!(
            address_of(&svc(json!({PORT_ANNOTATION: "metrics"}), two.clone()), Addressing::Loopback).unwrap(),
            "http://127.0.0.1:9090"
        );
        assert!(
            address_of(&svc(json!({PORT_ANNOTATION: "grpc"}), two), Addressing::ClusterDns)
                .unwrap_err()
                .contains("no port")
        );
    }

    #[test]
    fn find_names_why_no_agent_serves_a_skill() {
        let r = Registry::default();
        let ready = |ns: &str, svc: &str, skills: &[&str], state: AgentState| Agent {
            namespace: ns.into(),
            service: svc.into(),
            url: String::new(),
            state,
            reason: Some("connection refused".into()),
            name: String::new(),
            description: String::new(),
            skills: skills.iter().map(|s| (*s).to_owned()).collect(),
            allowed_namespaces: if ns == "other" { vec!["shop".into()] } else { vec![] },
            checked_at: String::new(),
            card: None,
        };
        r.put(ready("shop", "a", &["triage"], AgentState::Ready));
        r.put(ready("shop", "b", &["diagnose"], AgentState::Unreachable));
        r.put(ready("other", "c", &["diagnose"], AgentState::Ready));
        assert_eq!(r.find("shop", None, "triage").unwrap().key(), "shop/a");
        let why = r.find("shop", None, "diagnose").unwrap_err();
        assert!(
            why.contains("shop/a lists skills [\"triage\"]")
                && why.contains("shop/b is Unreachable: connection refused"),
            "{why}"
        );
        // Another namespace's agent only when the policy pins it and the agent lets it.
        assert_eq!(r.find("shop", Some(("other", "c")), "diagnose").unwrap().key(), "other/c");
        let why = r.find("third", Some(("other", "c")), "diagnose").unwrap_err();
        assert!(why.contains("does not take delegations from namespace third"), "{why}");
        assert!(r.find("empty", None, "diagnose").unwrap_err().contains("no agent discovered in namespace empty"));
        // Two agents with the skill: ambiguous, never the first by name.
        r.put(ready("shop", "c", &["triage"], AgentState::Ready));
        let why = r.find("shop", None, "triage").unwrap_err();
        assert!(why.contains("ambiguous: shop/a and shop/c both list skill \"triage\""), "{why}");
        assert_eq!(r.find("shop", Some(("shop", "c")), "triage").unwrap().key(), "shop/c");
    }

    #[test]
    fn an_external_or_selectorless_service_is_not_followed() {
        for spec in [
            json!({"type": "ExternalName", "externalName": "admin.internal", "ports": [{"port": 80}]}),
            json!({"ports": [{"port": 80}]}),
        ] {
            let svc: Service =
                serde_json::from_value(json!({"metadata": {"name": "peer", "namespace": "shop"}, "spec": spec}))
                    .unwrap();
            assert!(address_of(&svc, Addressing::ClusterDns).unwrap_err().contains("must select its Pods"));
        }
    }
}
