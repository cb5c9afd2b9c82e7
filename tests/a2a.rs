#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A2A with a peer nobody here wrote: the official Python A2A SDK (`a2a-sdk`, in `.venv`,
//! installed by `make test`'s prerequisites) as a client of Reflex — the operator as
//! `reflex run` assembles it, on the sandbox under the demo's RBAC, with the `oom` scenario's
//! workload and model (the stand-in for Prometheus and the kubelet).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use reflex::api::remediation::{Phase, Remediation};
use reflex::demo::model::OomModel;
use reflex::demo::scenario::Scenario;
use reflex::operator::{self, Operator};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const OPERATOR_TOKEN: &str = "reflex-demo-operator";
/// An agent's identity that may start and follow Remediations in shop, and read workloads.
const AGENT_TOKEN: &str = "reflex-test-agent";
/// On call: may follow and cancel Remediations, not create them, and cannot read workloads.
const ALICE_TOKEN: &str = "reflex-demo-alice";

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

/// The demo's RBAC, plus `shop/incident-agent` (the ServiceAccount another agent runs as),
/// and the operator's leave to act as its A2A callers (as for MCP callers).
fn rbac() -> reflex::sandbox::rbac::Table {
    let mut table: Value = serde_saphyr::from_str(reflex::demo::DEMO_RBAC).unwrap();
    table["serviceAccounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"namespace": "shop", "name": "incident-agent", "token": AGENT_TOKEN}));
    let grants = table["grants"].as_array_mut().unwrap();
    grants.push(json!({"subjects": [{"kind": "ServiceAccount", "namespace": "shop", "name": "incident-agent"}],
        "namespaces": ["shop"], "rules": [
            {"apiGroups": ["reflex.dev"], "resources": ["remediations"], "verbs": ["create", "get", "list", "watch", "patch"]},
            {"apiGroups": ["", "apps"], "resources": ["deployments", "pods", "events"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"]}]}));
    grants.push(json!({"subjects": [{"kind": "ServiceAccount", "namespace": "reflex-system", "name": "reflex"}],
        "rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["alice"]},
                  {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"], "resourceNames": ["oncall"]}]}));
    grants.push(json!({"subjects": [{"kind": "ServiceAccount", "namespace": "reflex-system", "name": "reflex"}],
        "namespaces": ["shop"],
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"], "resourceNames": ["incident-agent"]}]}));
    reflex::sandbox::rbac::Table::from_yaml(&table.to_string()).unwrap()
}

struct World {
    sandbox: Sandbox,
    admin: kube::Client,
    model: Arc<OomModel>,
    /// The operators' hash-chained audit log (each operator appends to it).
    audit_log: PathBuf,
}

impl World {
    async fn start() -> Self {
        reflex::install_crypto_provider();
        let scenario = Scenario::built_in("oom").unwrap();
        let model = Arc::new(OomModel::new(&scenario.model).unwrap());
        let config = Config { pod_model: Some(model.clone()), rbac: rbac(), ..Config::default() };
        let sandbox = Sandbox::start(config).await.unwrap();
        model.attach(sandbox.api().clone());
        sandbox.install_crds().unwrap();
        let admin = sandbox.client(ADMIN_TOKEN).await.unwrap();
        let mut docs = scenario.documents().unwrap();
        // A second policy on the same workload that deploys only with an approval: its
        // Remediation waits (input-required) until someone approves, or cancels it.
        let mut approve = docs.iter().find(|d| d["kind"] == "RemediationPolicy").unwrap().clone();
        approve["metadata"]["name"] = json!("checkout-approve");
        approve["spec"]["trust"] = json!({"level": "propose"});
        docs.push(approve);
        docs.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reflex-reader", "namespace": "shop"}}));
        for doc in &docs {
            reflex::demo::apply(&admin, doc).await.unwrap();
        }
        let audit_log = common::servers::temp_dir().join("audit.jsonl");
        Self { sandbox, admin, model, audit_log }
    }

    /// The operator, as `reflex run` assembles it, serving on a fresh port; `stop` ends it.
    async fn operator(&self) -> (String, CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
        let (base, stop, tasks, _) =
            self.operator_with(reflex::a2a::registry::Addressing::ClusterDns, reflex::operator::Roles::ALL).await;
        (base, stop, tasks)
    }

    /// The operator discovering agents at their Services' ports on loopback (as an operator
    /// outside the cluster does, with the ports forwarded), re-reading cards every 200ms.
    async fn operator_with_discovery(
        &self,
    ) -> (String, CancellationToken, Vec<tokio::task::JoinHandle<()>>, Arc<reflex::a2a::registry::Registry>) {
        self.operator_with(reflex::a2a::registry::Addressing::Loopback, reflex::operator::Roles::ALL).await
    }

    async fn operator_with(
        &self,
        addressing: reflex::a2a::registry::Addressing,
        roles: reflex::operator::Roles,
    ) -> (String, CancellationToken, Vec<tokio::task::JoinHandle<()>>, Arc<reflex::a2a::registry::Registry>) {
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let op = Operator::assemble(
            operator::Config {
                client: self.sandbox.client(OPERATOR_TOKEN).await.unwrap(),
                kube_config: self.sandbox.config(OPERATOR_TOKEN).await.unwrap(),
                metrics: self.model.clone(),
                prometheus: None,
                mcp_url: format!("http://{address}/mcp"),
                roles,
                a2a: reflex::a2a::Settings {
                    url: format!("http://{address}/a2a"),
                    addressing,
                    refresh: Duration::from_millis(200),
                },
                own_token: Some((OPERATOR_TOKEN.to_owned(), None)),
                mcp_allowed_hosts: vec![],
                mcp_audiences: vec![],
                webhook: reflex::intake::webhook::Settings { token: Some("t".into()), kill_switch: None },
                prices: Default::default(),
                audit: Arc::new(reflex::mcp::client::MemoryAudit::default()),
                audit_log: Some(Arc::new(reflex::audit::AuditLog::file(&self.audit_log).unwrap())),
                deployers: Default::default(),
                max_concurrent_deploys: None,
                alertmanager: None,
                gitops: Default::default(),
            },
            &stop,
        );
        tokio::time::timeout(Duration::from_secs(10), op.intake.ready()).await.unwrap();
        let server = op.serve(listener, stop.clone());
        let registry = op.delegates.clone();
        let controller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                op.run_controller(None, async move { stop.cancelled().await }).await.unwrap();
            })
        };
        (format!("http://{address}"), stop, vec![server, controller], registry)
    }

    async fn phase(&self, name: &str) -> Option<Phase> {
        let rem = Api::<Remediation>::namespaced(self.admin.clone(), "shop").get(name).await.unwrap();
        rem.status.map(|s| s.phase)
    }
}

/// Runs the Python client's `step`; its output lines as JSON.
async fn python_client(base: &str, token: &str, step: &str, args: &[&str]) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/a2a_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python()).arg(script).arg(base).arg(token).arg(step).args(args).output(),
    )
    .await
    .expect("the Python client did not finish within 120s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty(), "python client {step} printed nothing:\n{}", String::from_utf8_lossy(&out.stderr));
    lines
}

/// The one error a refused step printed.
fn refusal(lines: &[Value]) -> String {
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["step"], "error", "expected a refusal: {lines:?}");
    lines[0]["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_a2a_sdk_finds_reflex_diagnoses_remediates_cancels_and_reads_tasks_after_a_restart() {
    let world = World::start().await;
    let (base, stop, tasks) = world.operator().await;

    // The card: three skills, JSON-RPC 1.0 at /a2a, Kubernetes bearer tokens.
    let card = &python_client(&base, AGENT_TOKEN, "card", &[]).await[0]["card"];
    let skills: Vec<&str> = card["skills"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(skills, ["remediate", "diagnose", "status"], "{card}");
    assert_eq!(card["supportedInterfaces"][0]["url"], format!("{base}/a2a"));
    assert_eq!(card["supportedInterfaces"][0]["protocolBinding"], "JSONRPC");
    assert_eq!(card["supportedInterfaces"][0]["protocolVersion"], "1.0");
    assert_eq!(card["securitySchemes"]["kubernetes"]["httpAuthSecurityScheme"]["scheme"], "bearer", "{card}");
    assert_eq!(card["capabilities"]["streaming"], true);

    // No token: 401 before any JSON-RPC handling.
    let r = reqwest::Client::new()
        .post(format!("{base}/a2a"))
        .header("A2A-Version", "1.0")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "shop/x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));

    // diagnose, once checkout has been OOM-killed: the findings name the cause and the limit.
    common::servers::until("checkout to be OOM-killed", Duration::from_secs(10), async || {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(world.admin.clone(), "shop");
        let list = pods.list(&Default::default()).await.unwrap();
        let restarts: i32 = list
            .items
            .iter()
            .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
            .map(|c| c.restart_count)
            .sum();
        (restarts > 0).then_some(())
    })
    .await;
    let reply = &python_client(&base, AGENT_TOKEN, "diagnose", &["shop", "Deployment", "checkout"]).await[0];
    assert_eq!(reply["step"], "diagnose", "{reply}");
    let findings = reply["data"][0]["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["detail"].as_str().unwrap().contains("OOMKilled (exit 137), memory limit 128Mi")),
        "{reply}"
    );
    // As alice, who may not read Deployments: refused, with the reason.
    let why = refusal(&python_client(&base, ALICE_TOKEN, "diagnose", &["shop", "Deployment", "checkout"]).await);
    assert!(why.contains("forbidden"), "{why}");
    // alice may not change checkout (nor create Remediations), so she cannot start one over
    // A2A either: Reflex changes for a caller only what the caller may change.
    let why = refusal(&python_client(&base, ALICE_TOKEN, "start", &["shop", "checkout-oom", "checkout"]).await);
    assert!(why.contains("forbidden: alice may not get Deployment shop/checkout"), "{why}");
    // An alert the policy does not act on is refused before anything is created.
    let why = refusal(&python_client(&base, AGENT_TOKEN, "start", &["shop", "checkout-oom", "cart"]).await);
    assert!(why.contains("alert.labels: policy checkout-oom's matcher"), "{why}");

    // A remediate task under the approval policy waits for a person (input-required); the
    // caller cancels it, and the Remediation is cancelled.
    let started = python_client(&base, AGENT_TOKEN, "start", &["shop", "checkout-approve", "checkout"]).await;
    let task = &started[0]["event"];
    let id = task["id"].as_str().unwrap().to_owned();
    let name = id.strip_prefix("shop/").unwrap().to_owned();
    assert!(name.starts_with("a2a-"), "{task}");
    let rems: Api<Remediation> = Api::namespaced(world.admin.clone(), "shop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = rems.get(&name).await.unwrap().status;
        if status.as_ref().is_some_and(|s| s.phase == Phase::AwaitingApproval) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never awaited approval: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Subscribing to it: the task now — working, its phase waiting for an approval a person
    // gives (the stream would go on; the client reads the first event).
    let followed = python_client(&base, AGENT_TOKEN, "subscribe", &[&id]).await;
    assert_eq!(followed[0]["kind"], "task");
    assert_eq!(followed[0]["event"]["status"]["state"], "TASK_STATE_WORKING", "{followed:?}");
    assert_eq!(followed[0]["event"]["metadata"]["phase"], "AwaitingApproval", "{followed:?}");
    let cancelled = &python_client(&base, AGENT_TOKEN, "cancel", &[&id]).await[0];
    assert_eq!(cancelled["task"]["status"]["state"], "TASK_STATE_CANCELED", "{cancelled}");
    assert_eq!(world.phase(&name).await, Some(Phase::Cancelled));
    // An ended task is not followed: SubscribeToTask says so.
    let why = refusal(&python_client(&base, AGENT_TOKEN, "subscribe", &[&id]).await);
    assert!(why.contains("has ended") && why.contains("GetTask"), "{why}");

    // A remediate task streamed to its end: the task first, then its phases and artifacts,
    // ending completed with the proposal and the verdict.
    let events = python_client(&base, AGENT_TOKEN, "remediate", &["shop", "checkout-oom", "checkout"]).await;
    assert_eq!(events[0]["kind"], "task", "{events:?}");
    let streamed = events[0]["event"]["id"].as_str().unwrap().to_owned();
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "status_update")
        .map(|e| e["event"]["status"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.last(), Some(&"TASK_STATE_COMPLETED"), "{events:?}");
    assert!(states.contains(&"TASK_STATE_WORKING"), "{states:?}");
    let artifact = |id: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == "artifact_update" && e["event"]["artifact"]["artifactId"] == id)
            .map(|e| e["event"]["artifact"]["parts"][0].clone())
            .next_back()
            .unwrap_or_else(|| panic!("no {id} artifact: {events:?}"))
    };
    let proposal = artifact("proposal");
    assert!(proposal["data"]["patch"].to_string().contains("memory"), "{proposal}");
    assert_eq!(artifact("verdict")["data"]["verdict"], "Passed");
    assert_eq!(world.phase(streamed.strip_prefix("shop/").unwrap()).await, Some(Phase::Succeeded));

    // The operator restarts (on another port): the tasks are Remediations, so it still
    // answers for them.
    stop.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
    }
    let (base, stop, _tasks) = world.operator().await;
    let got = &python_client(&base, AGENT_TOKEN, "get", &[&streamed]).await[0]["task"];
    assert_eq!(got["status"]["state"], "TASK_STATE_COMPLETED", "{got}");
    let ids: Vec<&str> =
        got["artifacts"].as_array().unwrap().iter().map(|a| a["artifactId"].as_str().unwrap()).collect();
    for wanted in ["proposal", "verdict", "links"] {
        assert!(ids.contains(&wanted), "{ids:?}");
    }
    let listed = &python_client(&base, AGENT_TOKEN, "list", &["shop"]).await[0]["ids"];
    for wanted in [&id, &streamed] {
        assert!(listed.as_array().unwrap().iter().any(|i| i == wanted.as_str()), "{listed}");
    }
    stop.cancel();

    // The audit log both operators wrote: one chain across the restart, a record for each
    // tool call, gate decision and deploy with the Remediation's trace id; and
    // `reflex audit verify` catches an edited, a removed and a reordered record.
    let text = std::fs::read_to_string(&world.audit_log).unwrap();
    let verified = reflex::audit::verify(&text).unwrap();
    assert_eq!(verified.chains, 1, "the restarted operator continued the chain");
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let trace = Api::<Remediation>::namespaced(world.admin.clone(), "shop")
        .get(streamed.strip_prefix("shop/").unwrap())
        .await
        .unwrap()
        .status
        .unwrap()
        .trace_id
        .unwrap();
    for kind in ["tool_call", "gate", "deploy"] {
        assert!(
            records.iter().any(|r| r["kind"] == kind && r["traceId"] == trace.as_str()),
            "no {kind} record for {trace}"
        );
    }
    let verify = |text: String| {
        let file = common::servers::temp_dir().join("audit-copy.jsonl");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflex"))
            .args(["audit", "verify"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = verify(text.clone());
    assert!(ok && said.contains("hold"), "{said}");
    let lines: Vec<&str> = text.lines().collect();
    let edited = text.replacen("\"kind\":\"deploy\"", "\"kind\":\"gate\"", 1);
    let removed = [&lines[..2], &lines[3..]].concat().join("\n");
    let reordered = [&[lines[1], lines[0]][..], &lines[2..]].concat().join("\n");
    for (tampered, what) in [(edited, "was edited"), (removed, "are missing"), (reordered, "does not follow")] {
        let (ok, said) = verify(tampered);
        assert!(!ok && said.contains(what), "{what}: {said}");
    }
}

/// The Python delegate agent on `port`; its stdout lines arrive on the receiver.
struct Peer {
    _child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    port: u16,
}

impl Peer {
    async fn start() -> Self {
        use tokio::io::AsyncBufReadExt;
        let port = common::servers::free_port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/a2a_agent.py");
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap_or(json!({"raw": line})));
            }
        });
        let first = tokio::time::timeout(Duration::from_secs(30), lines.recv()).await.unwrap().unwrap();
        assert_eq!(first["event"], "listening", "{first}");
        // Listening once the card is served.
        common::servers::until("the Python agent's card", Duration::from_secs(10), async || {
            let url = format!("http://127.0.0.1:{port}/.well-known/agent-card.json");
            reqwest::get(url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        Self { _child: child, lines, port }
    }

    async fn control(&self, body: Value) {
        let _ = reqwest::Client::new().post(format!("http://127.0.0.1:{}/control", self.port)).json(&body).send().await;
    }

    /// The next line with `event`, skipping others.
    async fn next(&mut self, event: &str) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("the Python agent printed no {event} within 30s"))
                .unwrap();
            if line["event"] == event {
                return line;
            }
        }
    }
}

/// A Remediation of `checkout` under `policy`, as intake would create it for the OOM alert.
async fn remediate(admin: &kube::Client, name: &str, policy: &str) {
    use reflex::a2a::task::{Remediate, remediation_for};
    let labels = [("namespace", "shop"), ("deployment", "checkout"), ("container", "app")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let request = Remediate {
        namespace: "shop".into(),
        policy: policy.into(),
        target: reflex::api::remediation::TargetRef {
            api_version: "apps/v1".into(),
            kind: reflex::api::TargetKind::Deployment,
            name: "checkout".into(),
        },
        alert_name: "KubeContainerOOMKilled".into(),
        labels,
        annotations: Default::default(),
        description: String::new(),
        names_alert: true,
    };
    let rem = remediation_for(&request, name, name, name, k8s_openapi::jiff::Timestamp::now());
    Api::<Remediation>::namespaced(admin.clone(), "shop").create(&Default::default(), &rem).await.unwrap();
}

async fn ended(admin: &kube::Client, name: &str) -> reflex::api::remediation::RemediationStatus {
    let rems: Api<Remediation> = Api::namespaced(admin.clone(), "shop");
    common::servers::until(&format!("Remediation {name} to end"), Duration::from_secs(60), async || {
        rems.get(name).await.unwrap().status.filter(|s| s.phase.is_terminal())
    })
    .await
}

async fn condition(admin: &kube::Client, policy: &str) -> Option<(String, String, String)> {
    let p = Api::<reflex::api::RemediationPolicy>::namespaced(admin.clone(), "shop").get(policy).await.unwrap();
    let c = p.status?.conditions.into_iter().find(|c| c.type_ == "DelegatesAvailable")?;
    Some((c.status, c.reason, c.message))
}

/// Reflex finds an agent nobody here wrote (the Python SDK's server) through an annotated
/// Service, with no other configuration, and hands it a policy's diagnosis; every fault —
/// a stream that never ends (the delegate is cancelled), a malformed answer, a refusal, a
/// card whose skills changed, an agent that disappeared — escalates with the reason or falls
/// back as the policy says, and the policy's condition says whether its delegate is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflex_discovers_a_python_agent_and_delegates_diagnosis_through_every_fault() {
    let world = World::start().await;
    let mut peer = Peer::start().await;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "oom-expert", "namespace": "shop",
        "annotations": {"reflex.dev/a2a-agent": "true"}},
        "spec": {"selector": {"app": "oom-expert"}, "ports": [{"name": "a2a", "port": peer.port}]}});
    reflex::demo::apply(&world.admin, &service).await.unwrap();
    // One policy per fault (each has its own cooldown), all on checkout.
    let base = Scenario::built_in("oom")
        .unwrap()
        .documents()
        .unwrap()
        .into_iter()
        .find(|d| d["kind"] == "RemediationPolicy")
        .unwrap();
    for (name, fallback, timeout) in [
        ("oom-timeout", "escalate", "2s"),
        ("oom-malformed", "escalate", "10s"),
        ("oom-refused", "escalate", "10s"),
        ("oom-skills", "escalate", "10s"),
        ("checkout-oom", "playbook", "10s"),
        ("oom-gone", "escalate", "10s"),
    ] {
        let mut policy = base.clone();
        policy["metadata"]["name"] = json!(name);
        policy["spec"]["delegate"] =
            json!({"diagnose": {"skill": "diagnose-oom", "timeout": timeout, "fallback": fallback}});
        reflex::demo::apply(&world.admin, &policy).await.unwrap();
    }
    // A policy that delegates the change itself.
    let mut policy = base.clone();
    policy["metadata"]["name"] = json!("oom-delegated-change");
    policy["spec"]["delegate"] = json!({"propose": {"skill": "propose-fix", "timeout": "10s"}});
    reflex::demo::apply(&world.admin, &policy).await.unwrap();
    let (base_url, stop, _tasks, registry) = world.operator_with_discovery().await;
    let registry = || registry.clone();

    // Discovered: the card, its skills, and the policies' conditions.
    common::servers::until("the agent in the registry", Duration::from_secs(10), async || {
        registry()
            .agents()
            .into_iter()
            .find(|a| a.key() == "shop/oom-expert" && a.skills == ["diagnose-oom"])
            .map(|_| ())
    })
    .await;
    common::servers::until("the policy's condition", Duration::from_secs(10), async || {
        condition(&world.admin, "checkout-oom").await.filter(|c| c.0 == "True" && c.1 == "AgentsReady")
    })
    .await;
    // On Reflex's MCP server: a tool and a resource, showing only agents whose Service the
    // caller may get (the operator's identity may; alice may not).
    let mcp_url = format!("{base_url}/mcp");
    let call = async |token: &str| {
        use rmcp::model::CallToolRequestParams;
        let client = common::mcp::connect(&mcp_url, token).await;
        let r = client.call_tool(CallToolRequestParams::new("list_agents")).await.unwrap();
        let agents = r.structured_content.unwrap()["agents"].clone();
        let resources = client.list_all_resources().await.unwrap();
        let uris: Vec<String> = resources.into_iter().map(|r| r.uri).filter(|u| u.starts_with("agent://")).collect();
        (agents, uris)
    };
    let (agents, uris) = call(OPERATOR_TOKEN).await;
    assert_eq!(agents[0]["service"], "oom-expert", "{agents}");
    assert_eq!(agents[0]["skills"], json!(["diagnose-oom"]));
    assert_eq!(agents[0]["state"], "Ready");
    assert_eq!(uris, ["agent://shop/oom-expert"]);
    // `reflex agents`: one pass, as the kubeconfig's identity.
    let found =
        reflex::a2a::registry::discover_once(&world.admin, Some("shop"), reflex::a2a::registry::Addressing::Loopback)
            .await
            .unwrap();
    let table = reflex::a2a::registry::table(&found);
    assert!(table.lines().nth(1).unwrap().starts_with("shop/oom-expert"), "{table}");
    assert!(table.contains("Ready") && table.contains("diagnose-oom"), "{table}");
    let (agents, uris) = call(ALICE_TOKEN).await;
    assert_eq!(agents, json!([]), "alice may not get Services");
    assert!(uris.is_empty());

    // A stream that never ends: timed out, the delegate's task cancelled, escalated.
    peer.control(json!({"mode": "hang"})).await;
    remediate(&world.admin, "fault-timeout", "oom-timeout").await;
    assert_eq!(peer.next("request").await["skill"], "diagnose-oom");
    let status = ended(&world.admin, "fault-timeout").await;
    assert_eq!(status.phase, Phase::Escalated);
    let message = status.message.unwrap_or_default();
    assert!(message.contains("agent shop/oom-expert did not finish within 2s"), "{message}");
    peer.next("cancel").await;

    // A malformed answer, and a refusal: escalated, each with its reason.
    peer.control(json!({"mode": "malformed"})).await;
    remediate(&world.admin, "fault-malformed", "oom-malformed").await;
    let message = ended(&world.admin, "fault-malformed").await.message.unwrap_or_default();
    assert!(message.contains("answered with nothing usable: findings is not a list"), "{message}");
    peer.control(json!({"mode": "refuse"})).await;
    remediate(&world.admin, "fault-refused", "oom-refused").await;
    let message = ended(&world.admin, "fault-refused").await.message.unwrap_or_default();
    assert!(
        message.contains("refused: the task ended Rejected") && message.contains("asked about by name"),
        "{message}"
    );

    // The card changes its skills: re-read, the registry and the condition follow, and a
    // delegation to the skill it dropped names why there is no agent.
    peer.control(json!({"mode": "good", "skills": ["triage"]})).await;
    common::servers::until("the changed card", Duration::from_secs(10), async || {
        registry().agent("shop", "oom-expert").filter(|a| a.skills == ["triage"]).map(|_| ())
    })
    .await;
    common::servers::until("the condition to say no agent", Duration::from_secs(10), async || {
        condition(&world.admin, "oom-skills").await.filter(|c| c.0 == "False" && c.1 == "NoAgent")
    })
    .await;
    remediate(&world.admin, "fault-skills", "oom-skills").await;
    let message = ended(&world.admin, "fault-skills").await.message.unwrap_or_default();
    assert!(message.contains(r#"shop/oom-expert lists skills ["triage"], not "diagnose-oom""#), "{message}");

    // Back to its skills. A delegate's harmful change is judged like any other: the patch
    // safety check refuses it, and nothing is deployed.
    peer.control(json!({"mode": "harmful", "skills": ["diagnose-oom", "propose-fix"]})).await;
    common::servers::until("the card again", Duration::from_secs(10), async || {
        registry().agent("shop", "oom-expert").filter(|a| a.skills == ["diagnose-oom", "propose-fix"]).map(|_| ())
    })
    .await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(world.admin.clone(), "shop");
    let generation = deployments.get("checkout").await.unwrap().metadata.generation;
    remediate(&world.admin, "harmful", "oom-delegated-change").await;
    let status = ended(&world.admin, "harmful").await;
    let proposal = status.proposal.clone().unwrap();
    assert_eq!(proposal.produced_by, reflex::api::remediation::ProposalSource::Delegate);
    assert!(proposal.rationale.contains("proposed by agent shop/oom-expert over A2A"), "{}", proposal.rationale);
    assert!(matches!(status.phase, Phase::Failed | Phase::Escalated), "{:?}: {:?}", status.phase, status.message);
    let message = status.message.unwrap_or_default();
    assert!(message.contains("image") || message.contains("privileged"), "{message}");
    assert_eq!(deployments.get("checkout").await.unwrap().metadata.generation, generation, "nothing was deployed");

    // The diagnosis is the delegate's, and the loop goes on to a verified fix.
    peer.control(json!({"mode": "good"})).await;
    remediate(&world.admin, "delegated", "checkout-oom").await;
    let status = ended(&world.admin, "delegated").await;
    assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.message);
    let diagnosis = status.diagnosis.unwrap();
    assert_eq!(
        diagnosis.summary,
        "delegated to agent shop/oom-expert (skill diagnose-oom): Deployment checkout is killed for memory"
    );
    assert_eq!(diagnosis.findings[0].detail, "working set 200Mi over a 128Mi limit");
    assert_eq!(diagnosis.findings[0].source, "a2a shop/oom-expert (diagnose-oom): oom-expert");

    // The agent disappears: unreachable in the registry and the condition, and escalated.
    peer.control(json!({"mode": "gone"})).await;
    common::servers::until("the agent to be unreachable", Duration::from_secs(10), async || {
        registry()
            .agent("shop", "oom-expert")
            .filter(|a| a.state == reflex::a2a::registry::AgentState::Unreachable)
            .map(|_| ())
    })
    .await;
    common::servers::until("the condition to say unreachable", Duration::from_secs(10), async || {
        condition(&world.admin, "oom-gone").await.filter(|c| c.0 == "False" && c.1 == "CardUnreachable")
    })
    .await;
    remediate(&world.admin, "fault-gone", "oom-gone").await;
    let message = ended(&world.admin, "fault-gone").await.message.unwrap_or_default();
    assert!(message.contains("shop/oom-expert is Unreachable"), "{message}");
    stop.cancel();
    // Each delegation is an audit record: the agent, the skill, the outcome.
    let text = std::fs::read_to_string(&world.audit_log).unwrap();
    reflex::audit::verify(&text).unwrap();
    let delegations: Vec<Value> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|r| r["kind"] == "delegation").collect();
    assert!(
        delegations.iter().any(|r| r["record"]["server"] == "a2a:shop/oom-expert"
            && r["record"]["tool"] == "delegate:diagnose-oom"
            && r["record"]["outcome"] == "ok"),
        "{delegations:?}"
    );
    assert!(delegations.iter().any(|r| r["record"]["outcome"].as_str().unwrap().contains("did not finish within 2s")));
}

/// `reflex run --role`: each role serves only its own endpoints (health and metrics on all),
/// so a chart can give each its own Deployment and ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_serves_only_its_own_endpoints() {
    let world = World::start().await;
    let http = reqwest::Client::new();
    for (role, served) in [
        ("intake", vec!["/alerts"]),
        ("mcp", vec!["/mcp", "/a2a", "/.well-known/agent-card.json"]),
        ("controller", vec![]),
    ] {
        let roles = reflex::operator::Roles::parse(role).unwrap();
        let (base, stop, _tasks, _) = world.operator_with(reflex::a2a::registry::Addressing::ClusterDns, roles).await;
        for path in ["/alerts", "/mcp", "/a2a", "/.well-known/agent-card.json"] {
            let status = if path.starts_with("/.well-known") {
                http.get(format!("{base}{path}")).send().await.unwrap().status()
            } else {
                http.post(format!("{base}{path}")).json(&json!({})).send().await.unwrap().status()
            };
            // Served: an answer of its own (401 without a token, or the card); not served: 404.
            assert_eq!(status == 404, !served.contains(&path), "{role} {path}: {status}");
        }
        for path in ["/healthz", "/metrics"] {
            assert_eq!(http.get(format!("{base}{path}")).send().await.unwrap().status(), 200, "{role} {path}");
        }
        stop.cancel();
    }
    assert!(reflex::operator::Roles::parse("webhook").unwrap_err().contains("all, controller, intake or mcp"));
}
