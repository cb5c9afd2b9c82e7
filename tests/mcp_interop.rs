#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with the official Python MCP SDK (`mcp`, installed into `.venv` by `make test`'s
//! prerequisites): its client against Reflex's MCP server, in both protocol generations —
//! initialize, list tools, call a tool, read a resource, get a prompt, and cancel a slow call
//! (the work must actually stop: the stand-in Prometheus the slow call waits on sees its
//! connection closed long before the tool's timeout).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// The project's virtualenv Python (`make prereqs` creates it).
pub fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run `make prereqs` (it installs the Python MCP SDK)", p.display());
    p
}

async fn run_python_client(mode: &str) {
    let (prom_url, mut closed) = common::mcp::hanging_prometheus().await;
    let prom = reflex::mcp::server::prometheus_client(&prom_url).unwrap();
    let s = common::mcp::setup_with(Some(prom)).await;
    common::mcp::create_remediation(&s.admin).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python()).arg(script).arg(&s.url).arg("t-alice").arg(mode).output(),
    )
    .await
    .expect("the Python client finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let steps: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let step =
        |name: &str| steps.iter().find(|s| s["step"] == name).cloned().unwrap_or_else(|| panic!("no {name}: {stdout}"));

    let init = step("initialize");
    let expected_protocol = if mode == "legacy" { "2025-11-25" } else { "2026-07-28" };
    assert_eq!(init["protocol"], expected_protocol, "{init}");
    let tools = step("list_tools");
    assert_eq!(tools["names"].as_array().unwrap().len(), reflex::mcp::server::TOOL_VERSIONS.len(), "{tools}");
    assert_eq!(tools["with_output_schema"], tools["names"].as_array().unwrap().len());
    let called = step("call_tool");
    assert_eq!(called["is_error"], false, "{called}");
    assert_eq!(called["structured"]["object"]["metadata"]["name"], "checkout");
    let failed = step("call_tool_error");
    assert_eq!(failed["is_error"], true);
    assert!(failed["text"][0].as_str().unwrap().contains("not found"), "{failed}");
    let read = step("read_resource");
    assert_eq!(read["uri"], "remediation://shop/checkout-oom-checkout-1");
    assert!(read["text"].as_str().unwrap().contains("checkout-oom"), "{read}");
    assert!(step("get_prompt")["text"].as_str().unwrap().contains("KubeContainerOOMKilled"));
    let cancel = step("cancel");
    assert_eq!(cancel["cancelled"], true, "{cancel}");
    assert_eq!(step("after_cancel")["count"], 1);
    // The slow call's work stopped: its connection to Prometheus closed well before the
    // tool's 10 s timeout.
    let open_for =
        tokio::time::timeout(Duration::from_secs(8), closed.recv()).await.expect("the call was stopped").unwrap();
    assert!(open_for < Duration::from_secs(6), "Prometheus connection stayed open {open_for:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_2025_protocol_against_reflex() {
    run_python_client("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_client_2026_protocol_against_reflex() {
    run_python_client("2026-07-28").await;
}

/// The FastMCP peer, killed when dropped.
struct PythonServer {
    _child: tokio::process::Child,
    url: String,
}

async fn python_server(drift: bool) -> PythonServer {
    use tokio::io::AsyncBufReadExt;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_server.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script).arg("--port").arg("0").stdout(std::process::Stdio::piped()).kill_on_drop(true);
    if drift {
        cmd.arg("--drift");
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the peer starts")
        .unwrap()
        .unwrap();
    let port = ready.strip_prefix("READY ").expect("READY <port>").trim().to_owned();
    PythonServer { _child: child, url: format!("http://127.0.0.1:{port}/mcp") }
}

fn spec(url: &str, pins: Vec<reflex::mcp::client::Pin>, timeout: Duration) -> reflex::mcp::client::ServerSpec {
    reflex::mcp::client::ServerSpec { name: "python-peer".into(), url: url.into(), token: None, pins, timeout }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflex_client_against_a_fastmcp_server() {
    use reflex::mcp::client::{CallContext, ClientError, McpClient, MemoryAudit, Pin};
    let peer = python_server(false).await;
    let audit = std::sync::Arc::new(MemoryAudit::default());
    // Learn the hashes (what an operator would review and pin).
    let probe = McpClient::connect(spec(&peer.url, vec![], Duration::from_secs(10)), audit.clone()).await.unwrap();
    let offered = probe.offered().clone();
    assert_eq!(offered.keys().collect::<Vec<_>>(), ["get_pod", "slow"]);
    let pins: Vec<Pin> = offered.iter().map(|(t, h)| Pin { tool: t.clone(), hash: Some(h.clone()) }).collect();
    let client =
        McpClient::connect(spec(&peer.url, pins.clone(), Duration::from_secs(1)), audit.clone()).await.unwrap();
    let ctx = CallContext { trace_id: Some("trace-1".into()), ..CallContext::default() };
    let args = |v: Value| v.as_object().cloned().unwrap();
    let pod = client.call("get_pod", args(json!({"namespace": "shop", "name": "web-1"})), &ctx).await.unwrap();
    assert_eq!(pod, json!({"name": "web-1", "namespace": "shop", "phase": "Running"}));
    let e = client.call("get_pod", args(json!({"namespace": "shop", "name": "missing"})), &ctx).await.unwrap_err();
    assert!(matches!(&e, ClientError::Tool { message, .. } if message.contains("not found")), "{e}");
    let e = client.call("get_pod", args(json!({"namespace": "shop"})), &ctx).await.unwrap_err();
    assert!(matches!(e, ClientError::Tool { .. } | ClientError::Transport { .. }), "bad arguments are an error: {e}");
    // A server that hangs mid-call: the per-call timeout, not retried (slow is not read-only).
    let started = std::time::Instant::now();
    let e = client.call("slow", args(json!({"seconds": 30})), &ctx).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { secs: 1, .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Cancelled by the Remediation: at once.
    let cancel = CallContext::default();
    let trigger = cancel.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let started = std::time::Instant::now();
    let e = client.call("slow", args(json!({"seconds": 30})), &cancel).await.unwrap_err();
    assert!(matches!(e, ClientError::Cancelled { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_millis(900));
    // Audit: one record per call, with the result's digest when there is one.
    let records = audit.0.lock().unwrap().clone();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "tool_error", outcomes[2], "timeout", "cancelled"], "{records:?}");
    assert!(records[0].result_digest.as_deref().unwrap().starts_with("sha256:"));
    assert_eq!((records[0].trace_id.as_deref(), records[3].attempts), (Some("trace-1"), 1));
    // A tool that is offered but not pinned cannot be called.
    let narrow =
        McpClient::connect(spec(&peer.url, pins[..1].to_vec(), Duration::from_secs(5)), audit.clone()).await.unwrap();
    let e = narrow.call("slow", args(json!({"seconds": 0})), &ctx).await.unwrap_err();
    assert!(matches!(e, ClientError::NotAllowed { .. }), "{e}");

    // The same server, upgraded: get_pod's schema changed. The client refuses and says how.
    let upgraded = python_server(true).await;
    let refused = McpClient::connect(spec(&upgraded.url, pins.clone(), Duration::from_secs(10)), audit).await;
    match refused {
        Err(ClientError::Drift { tool, pinned, actual, .. }) => {
            assert_eq!(tool, "get_pod");
            assert_eq!(pinned, offered["get_pod"]);
            assert_ne!(actual, pinned);
        }
        Err(other) => panic!("expected drift, got {other}"),
        Ok(_) => panic!("expected drift, connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_external_servers_connect_with_their_secrets_and_pins() {
    use reflex::mcp::client::{ClientError, MemoryAudit, connect_policy_servers};
    let peer = python_server(false).await;
    let (sb, admin) = common::shop_with_policy(common::oom_policy()).await;
    let _sb = sb;
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), "shop");
    let labelled = json!({"reflex.dev/mcp-credentials": "true"});
    for (name, labels, host) in [
        ("peer-token", labelled.clone(), Some("http://127.0.0.1")),
        ("db-password", json!({}), Some("127.0.0.1")),
        ("unbound-token", labelled.clone(), None),
        ("other-server-token", labelled, Some("llm.example")),
    ] {
        let annotations = host.map(|h| json!({"reflex.dev/credentials-host": h})).unwrap_or(json!({}));
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({"metadata": {"name": name,
            "labels": labels, "annotations": annotations}, "stringData": {"token": "s3cret"}}))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let audit = std::sync::Arc::new(MemoryAudit::default());
    let server = |hash: Option<&str>, secret: &str| {
        let mut tool = json!({"name": "get_pod"});
        if let Some(h) = hash {
            tool["schemaHash"] = json!(h);
        }
        let spec: reflex::api::policy::McpServerSpec = serde_json::from_value(json!({"name": "peer", "url": peer.url,
            "tools": [tool], "authSecretRef": {"name": secret, "key": "token"}}))
        .unwrap();
        (spec, Duration::from_secs(10))
    };
    // Unpinned: allowed; the token comes from the Secret.
    let clients = connect_policy_servers(&admin, "shop", &[server(None, "peer-token")], audit.clone()).await.unwrap();
    let hash = clients[0].offered()["get_pod"].clone();
    // Pinned at the right hash: connects; at a stale one: refused, naming both.
    assert!(connect_policy_servers(&admin, "shop", &[server(Some(&hash), "peer-token")], audit.clone()).await.is_ok());
    let stale = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    match connect_policy_servers(&admin, "shop", &[server(Some(stale), "peer-token")], audit.clone()).await {
        Err(ClientError::Drift { tool, pinned, actual, .. }) => {
            assert_eq!((tool.as_str(), pinned.as_str(), actual), ("get_pod", stale, hash))
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected despite drift"),
    }
    // A missing Secret says which; a Secret not labelled for MCP is never sent anywhere.
    let e = connect_policy_servers(&admin, "shop", &[server(None, "nope")], audit.clone()).await.err().unwrap();
    assert!(e.to_string().contains("auth Secret shop/nope key token"), "{e}");
    let e = connect_policy_servers(&admin, "shop", &[server(None, "db-password")], audit.clone()).await.err().unwrap();
    assert!(e.to_string().contains("not labelled reflex.dev/mcp-credentials=true"), "{e}");
    // A credential goes only to the host it is bound to: another server's key is never sent
    // to this one, and an unbound one to none.
    let e = connect_policy_servers(&admin, "shop", &[server(None, "other-server-token")], audit.clone())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("is bound to llm.example") && e.to_string().contains("not 127.0.0.1"), "{e}");
    let e = connect_policy_servers(&admin, "shop", &[server(None, "unbound-token")], audit).await.err().unwrap();
    assert!(e.to_string().contains("annotate it reflex.dev/credentials-host=127.0.0.1"), "{e}");
}
