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
    let rem: reflex::api::remediation::Remediation = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "checkout-oom-checkout-1", "namespace": "shop"},
        "spec": {"policyRef": {"name": "checkout-oom"}, "alert": {"name": "KubeContainerOOMKilled", "fingerprint": "f1", "labels": {}, "annotations": {},
            "startsAt": "2026-01-01T00:00:00Z"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"}}}))
    .unwrap();
    Api::<reflex::api::remediation::Remediation>::namespaced(s.admin.clone(), "shop")
        .create(&PostParams::default(), &rem)
        .await
        .unwrap();
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
