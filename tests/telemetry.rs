#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Traces with a collector nobody here wrote: a real OTLP/gRPC TraceService receiver built from
//! the official OpenTelemetry protobuf definitions (`opentelemetry-proto` and `grpcio`, in
//! `.venv`, tests/peers/otlp_receiver.py). The LLM scenario runs the whole loop as the
//! operator is assembled, exporting to it; one Remediation must be one trace — the id its
//! status shows — with a span for every step, each MCP tool call on both sides joined by the
//! trace context in `_meta`, and the LLM call, whose `traceparent` header reached the model.
//!
//! Its own test binary: the OpenTelemetry layer is the process's global subscriber.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;

#[path = "common/otlp.rs"]
mod otlp;

/// SpanKind in the OTLP proto.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_remediation_is_one_trace_with_every_step_mcp_call_and_llm_call() {
    let mut receiver = otlp::receiver().await;
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let telemetry = reflex::telemetry::init_with(reflex::telemetry::LogFormat::Text, Some(&endpoint)).unwrap();
    assert!(telemetry.tracing(), "this test binary installs the only subscriber");

    let scenario = reflex::demo::scenario::Scenario::built_in("llm").unwrap();
    let mut out = Vec::new();
    let outcome = reflex::demo::run(scenario, false, &mut out).await.unwrap();
    assert!(outcome.as_expected(), "{}", String::from_utf8_lossy(&out));
    let rem = &outcome.remediation;
    let status = rem.status.as_ref().unwrap();
    let trace = status.trace_id.clone().expect("the status names the trace");
    telemetry.flush();

    // Every span of the trace, until the ones asserted on have all arrived.
    let mut spans: Vec<Value> = Vec::new();
    let mut elsewhere: Vec<Value> = Vec::new();
    let wanted = ["diagnose", "propose", "test", "gate", "deploy", "verify"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Complete when each wanted span has arrived with its parent (spans are exported as
        // they end, in batches: a parent may come after its child).
        let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["spanId"].as_str()).collect();
        let with_parent = |s: &&Value| ids.contains(s["parentSpanId"].as_str().unwrap_or_default());
        let names: BTreeSet<&str> = spans.iter().filter(with_parent).filter_map(|s| s["name"].as_str()).collect();
        let llm = names.iter().any(|n| n.starts_with("chat "));
        let mcp = spans.iter().filter(|s| s["kind"] == SERVER).all(|s| with_parent(&s))
            && spans.iter().any(|s| s["kind"] == SERVER);
        if wanted.iter().all(|w| names.contains(w)) && llm && mcp {
            break;
        }
        let next = tokio::time::timeout_at(deadline, receiver.spans.recv()).await;
        let Ok(Some(span)) = next else {
            panic!("spans of trace {trace} missing (have {names:?})");
        };
        if span["traceId"] == trace.as_str() {
            spans.push(span);
        } else {
            elsewhere.push(span);
        }
    }
    // The rest of what was exported: until nothing more comes for two seconds.
    while let Ok(Some(span)) = tokio::time::timeout(Duration::from_secs(2), receiver.spans.recv()).await {
        if span["traceId"] == trace.as_str() {
            spans.push(span);
        } else {
            elsewhere.push(span);
        }
    }
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (s["spanId"].as_str().unwrap(), s)).collect();
    assert!(spans.iter().all(|s| s["service"] == "reflex"), "{spans:#?}");

    // One trace: no reconcile of this Remediation was recorded under another.
    let name = rem.metadata.name.clone().unwrap();
    let strays: Vec<&Value> = elsewhere.iter().filter(|s| s["attributes"]["remediation"] == name.as_str()).collect();
    assert!(strays.is_empty(), "spans of {name} outside its trace: {strays:#?}");
    // No MCP call lost its caller on the way: a server span without a parent would be the
    // root of a trace of its own.
    let orphans: Vec<&Value> = spans
        .iter()
        .chain(&elsewhere)
        .filter(|s| s["kind"] == SERVER && s["attributes"]["rpc.system"] == "mcp" && s["parentSpanId"] == "")
        .collect();
    assert!(orphans.is_empty(), "MCP server spans without their caller: {orphans:#?}");
    // Only Reflex's own spans are exported (a library's span would be a trace per span).
    assert!(elsewhere.iter().all(|s| s["attributes"].get("object.ref").is_none()), "kube-runtime's spans exported");
    // Every step's span is a child of a reconcile of this Remediation, whose parent is the
    // Remediation's root span (the same id from every process).
    let root = reflex::telemetry::trace::root_span_id(&trace);
    for step in wanted {
        let parents: Vec<&Value> = spans
            .iter()
            .filter(|s| s["name"] == step)
            .filter_map(|s| by_id.get(s["parentSpanId"].as_str().unwrap()).copied())
            .collect();
        assert!(!parents.is_empty(), "{step}'s parent");
        for parent in parents {
            assert_eq!(parent["name"], "reconcile", "{step}");
            assert_eq!(parent["attributes"]["remediation"], name.as_str());
            assert_eq!(parent["parentSpanId"], root.as_str(), "{step}'s reconcile hangs off the Remediation's root");
        }
    }

    // MCP: the server's span of a tool call is the child of the client's, across HTTP, by the
    // trace context in the request's _meta.
    let served: Vec<&&Value> =
        by_id.values().filter(|s| s["kind"] == SERVER && s["attributes"]["rpc.system"] == "mcp").collect();
    assert!(!served.is_empty());
    for server in &served {
        let client = by_id.get(server["parentSpanId"].as_str().unwrap()).expect("the calling span is in the trace");
        assert_eq!(client["kind"], CLIENT, "{server:#?} is called by a client span");
        assert_eq!(client["name"], server["name"], "the same tool on both sides");
        assert!(server["name"].as_str().unwrap().starts_with("tools/call "));
    }

    // The LLM call: a span in the trace, and the model received it as the parent.
    let chats: Vec<&&Value> = by_id.values().filter(|s| s["name"].as_str().unwrap().starts_with("chat ")).collect();
    assert!(!chats.is_empty());
    assert!(!outcome.llm_traceparents.is_empty(), "the model received no traceparent");
    for header in &outcome.llm_traceparents {
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!(parts[1], trace, "the model's request carries the Remediation's trace");
        assert!(chats.iter().any(|c| c["spanId"] == parts[2]), "{header} names an LLM call span");
    }

    // A caller cannot switch recording off: a `-00` traceparent is continued, and exported.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let span = tracing::info_span!(target: "reflex::test", "probe");
    assert!(reflex::telemetry::trace::continue_from(&span, unsampled));
    assert!(!reflex::telemetry::trace::continue_from(
        &tracing::info_span!(target: "reflex::test", "probe-malformed"),
        "00-zz-00f067aa0ba902b7-01"
    ));
    drop(span);
    telemetry.flush();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let span = tokio::time::timeout_at(deadline, receiver.spans.recv())
            .await
            .expect("the probe span is exported")
            .unwrap();
        if span["name"] == "probe" {
            assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
            break;
        }
    }
    receiver.stop().await;
}
