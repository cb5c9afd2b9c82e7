#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Reflex's MCP server over streamable HTTP against the sandbox, driven by rmcp's client:
//! identity (TokenReview, impersonation, 401), RBAC deciding what each caller sees, Secret
//! redaction, input bounds, truncation notices, logs, rollout history, resources, prompt.

mod common;

use common::mcp::{connect, setup};

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, CallToolResult, GetPromptRequestParams, ReadResourceRequestParams};
use rmcp::service::RunningService;
use serde_json::{Value, json};

async fn call(client: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> CallToolResult {
    let args = args.as_object().cloned().unwrap_or_default();
    client.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args)).await.expect("a tool result")
}

fn text(r: &CallToolResult) -> String {
    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

fn ok(r: CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "tool failed: {}", text(&r));
    r.structured_content.clone().expect("structured content")
}

fn err(r: CallToolResult) -> String {
    assert_eq!(r.is_error, Some(true), "expected a tool error, got {:?}", r.structured_content);
    text(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_runs_as_the_caller_and_rbac_decides() {
    let s = setup().await;
    let alice = connect(&s.url, "t-alice").await;
    let bob = connect(&s.url, "t-bob").await;
    let tools = alice.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), reflex::mcp::server::TOOL_VERSIONS.len());
    let d =
        ok(call(&alice, "get_resource", json!({"kind": "Deployment", "namespace": "shop", "name": "checkout"})).await);
    assert_eq!(d["object"]["metadata"]["name"], "checkout");
    assert!(d["object"]["metadata"].get("managedFields").is_none());
    let e =
        err(call(&bob, "get_resource", json!({"kind": "Deployment", "namespace": "shop", "name": "checkout"})).await);
    assert!(e.contains("missing permission: get deployments in namespace shop"), "{e}");
    assert!(e.contains("User \"bob\""), "the API server judged bob, not the operator: {e}");
    // Alice may read shop, not other namespaces.
    let e = err(call(&alice, "list_resources", json!({"kind": "ConfigMap", "namespace": "kube-system"})).await);
    assert!(e.contains("missing permission: list configmaps in namespace kube-system"), "{e}");
    let e = err(call(&bob, "list_remediations", json!({"namespace": "shop"})).await);
    assert!(e.contains("missing permission: list remediations"), "{e}");
}

/// The identity the LLM agent reads as — a `reflex-reader` ServiceAccount, with a token the
/// operator mints per run — is kept in its namespace by the server itself, whatever RBAC
/// grants it elsewhere and whatever the client forgets: other namespaces, lists of every
/// namespace, cluster-scoped or unknown kinds and every action are refused, each naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_reader_is_kept_in_its_namespace_by_the_server() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let s = setup().await;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let minted = kube::Api::<ServiceAccount>::namespaced(s.admin.clone(), "shop")
        .create_token_request("reflex-reader", &Default::default(), &request)
        .await
        .unwrap();
    let token = minted.status.unwrap().token.unwrap();
    let reader = connect(&s.url, &token).await;
    let d =
        ok(call(&reader, "get_resource", json!({"kind": "Deployment", "namespace": "shop", "name": "checkout"})).await);
    assert_eq!(d["object"]["metadata"]["name"], "checkout");
    for (tool, args, why) in [
        (
            "list_resources",
            json!({"kind": "ConfigMap", "namespace": "kube-system"}),
            "may only read namespace \"shop\", not \"kube-system\"",
        ),
        ("list_resources", json!({"kind": "ConfigMap"}), "name it"),
        ("list_resources", json!({"kind": "Node", "namespace": "shop"}), "Node is not one"),
        ("list_resources", json!({"kind": "Namespace", "namespace": "shop"}), "Namespace is not one"),
        (
            "get_resource",
            json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1", "namespace": "shop", "name": "admin"}),
            "ClusterRole is not one",
        ),
        ("list_remediations", json!({}), "name it"),
        ("approve_remediation", json!({"namespace": "shop", "name": "x", "reason": "r"}), "takes no action"),
    ] {
        let e = err(call(&reader, tool, args.clone()).await);
        assert!(e.contains(why), "{tool} {args}: {e}");
    }
    // Resources too: another namespace's Remediation is not read, whatever RBAC says.
    let e = reader
        .read_resource(rmcp::model::ReadResourceRequestParams::new("remediation://payments/x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may only read namespace \"shop\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_for_callers_rbac_allows_to_query_them() {
    // Prometheus has no per-user authorization: the PromQL tools ask RBAC first.
    let (prom_url, _closed) = common::mcp::hanging_prometheus().await;
    let s = common::mcp::setup_with(Some(reflex::mcp::server::prometheus_client(&prom_url).unwrap())).await;
    let bob = connect(&s.url, "t-bob").await;
    for (tool, args) in [
        ("query_prometheus", json!({"query": "up"})),
        ("list_firing_alerts", json!({})),
        (
            "query_prometheus_range",
            json!({"query": "up", "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z", "stepSeconds": 60}),
        ),
    ] {
        let e = err(call(&bob, tool, args).await);
        assert!(e.contains("missing permission: get prometheus.reflex.dev"), "{tool}: {e}");
    }
}

/// The MCP transport's MUST: a request whose Origin is not one this server answers to gets
/// 403, with a valid token or without, while the Host is loopback (a web page posting to a
/// server on 127.0.0.1). Loopback origins and no Origin at all (non-browser clients) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_forbidden_even_with_a_loopback_host_and_a_valid_token() {
    let s = setup().await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
        "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let http = reqwest::Client::new();
    let send = |origin: Option<&'static str>, token: Option<&'static str>| {
        let mut req = http.post(&s.url).header("accept", "application/json, text/event-stream").json(&init);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for origin in
        ["http://evil.example", "https://evil.example:8443", "null", "file://", "http://127.0.0.1.evil.example"]
    {
        for token in [Some("t-alice"), None] {
            let resp = send(Some(origin), token).await.unwrap();
            assert_eq!(resp.status().as_u16(), 403, "{origin} {token:?}");
        }
    }
    for origin in [None, Some("http://127.0.0.1"), Some("http://localhost:3000"), Some("http://[::1]:8080")] {
        let resp = send(origin, Some("t-alice")).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{origin:?}");
    }
}

/// Token audiences: by default a caller's token must be for the API server (carol's, minted
/// for Reflex, is not); with `reflex` configured, carol's is accepted and alice's API token is
/// not — unless the API server's audience is listed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_tokens_must_be_minted_for_the_configured_audiences() {
    use reflex::mcp::identity::{AuthError, Identities};
    let s = setup().await;
    let operator = s.sb.client("t-operator").await.unwrap();
    let config = s.sb.config("t-operator").await.unwrap();
    let api_only = Identities::new(operator.clone(), config.clone());
    let e = api_only.authenticate("t-carol-for-reflex", None).await.unwrap_err();
    assert!(matches!(&e, AuthError::Rejected(m) if m.contains("invalid for the target audiences")), "{e}");
    assert_eq!(&*api_only.authenticate("t-alice", None).await.unwrap().user, "alice");
    let reflex_only = Identities::new(operator.clone(), config.clone()).with_audiences(vec!["reflex".into()]);
    assert_eq!(&*reflex_only.authenticate("t-carol-for-reflex", None).await.unwrap().user, "carol");
    assert!(matches!(reflex_only.authenticate("t-alice", None).await, Err(AuthError::Rejected(_))));
    let both = Identities::new(operator, config)
        .with_audiences(vec!["reflex".into(), reflex::sandbox::rbac::API_AUDIENCE.into()]);
    assert_eq!(&*both.authenticate("t-alice", None).await.unwrap().user, "alice");
    assert_eq!(&*both.authenticate("t-carol-for-reflex", None).await.unwrap().user, "carol");
}

/// A source presenting rejected tokens is refused further reviews for a while (429), so a
/// flood of bad tokens cannot spend the operator's API access; valid tokens already reviewed
/// still pass, and other sources are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_from_one_source_is_throttled_without_reviews() {
    use reflex::mcp::identity::{AuthError, Identities, MAX_REJECTED};
    let s = setup().await;
    let ids = Identities::new(s.sb.client("t-operator").await.unwrap(), s.sb.config("t-operator").await.unwrap());
    let (flood, other) = (Some("10.0.0.7".parse().unwrap()), Some("10.0.0.8".parse().unwrap()));
    assert!(ids.authenticate("t-alice", flood).await.is_ok(), "reviewed and cached before the flood");
    for i in 0..MAX_REJECTED {
        let e = ids.authenticate(&format!("bad-{i}"), flood).await.unwrap_err();
        assert!(matches!(e, AuthError::Rejected(_)), "{e}");
    }
    // The same bad token again is answered from memory, and counts nothing more.
    assert!(matches!(ids.authenticate("bad-0", other).await, Err(AuthError::Rejected(_))));
    let e = ids.authenticate("bad-next", flood).await.unwrap_err();
    assert!(matches!(e, AuthError::Throttled), "{e}");
    assert!(matches!(ids.authenticate("t-bob", flood).await, Err(AuthError::Throttled)), "no new review from there");
    assert_eq!(&*ids.authenticate("t-alice", flood).await.unwrap().user, "alice", "already reviewed");
    assert_eq!(&*ids.authenticate("t-bob", other).await.unwrap().user, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_it_is_401_before_any_mcp() {
    let s = setup().await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
        "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let http = reqwest::Client::new();
    for auth in [None, Some("Bearer nope"), Some("Basic dXNlcjpwYXNz")] {
        let mut req = http.post(&s.url).header("accept", "application/json, text/event-stream").json(&init);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
        assert!(resp.headers().get("www-authenticate").is_some());
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_leave_and_bounds_come_first() {
    let s = setup().await;
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}})).unwrap();
    Api::<Secret>::namespaced(s.admin.clone(), "shop").create(&PostParams::default(), &secret).await.unwrap();
    let alice = connect(&s.url, "t-alice").await;
    let got = ok(call(&alice, "get_resource", json!({"kind": "Secret", "namespace": "shop", "name": "db"})).await);
    assert!(!got.to_string().contains("hunter2") && !got.to_string().contains("aHVudGVyMg"), "{got}");
    assert_eq!(got["object"]["data"]["password"], "<redacted by reflex>");
    let listed = ok(call(&alice, "list_resources", json!({"kind": "Secret", "namespace": "shop"})).await);
    assert!(!listed.to_string().contains("aHVudGVyMg"), "{listed}");
    assert_eq!(listed["items"][0]["data"]["password"], "<redacted by reflex>");
    // Bounds are checked before any work, and say what is allowed.
    let e = err(call(&alice, "list_resources", json!({"kind": "Pod", "namespace": "shop", "limit": 5000})).await);
    assert!(e.contains("limit 5000 is over 500"), "{e}");
    let e = err(call(&alice, "get_pod_logs", json!({"namespace": "shop", "pod": "x", "tailLines": 999999})).await);
    assert!(e.contains("tailLines 999999 is over 2000"), "{e}");
    let e = err(call(&alice, "get_resource", json!({"kind": "Widget", "namespace": "shop", "name": "x"})).await);
    assert!(e.contains("give apiVersion"), "{e}");
    let e = err(call(&alice, "get_resource", json!({"kind": "Pod", "namespace": "Shop!", "name": "x"})).await);
    assert!(e.contains("not a valid Kubernetes name"), "{e}");
    // Wrong types and unknown tools are protocol errors, not crashes.
    let wrong = alice
        .call_tool(
            CallToolRequestParams::new("list_resources")
                .with_arguments(json!({"kind": 5}).as_object().cloned().unwrap()),
        )
        .await;
    assert!(wrong.is_err() || wrong.as_ref().is_ok_and(|r| r.is_error == Some(true)), "{wrong:?}");
    let unknown = alice.call_tool(CallToolRequestParams::new("delete_everything")).await;
    assert!(unknown.is_err() || unknown.as_ref().is_ok_and(|r| r.is_error == Some(true)), "{unknown:?}");
    // Prometheus tools say when there is no Prometheus.
    let e = err(call(&alice, "query_prometheus", json!({"query": "up"})).await);
    assert!(e.contains("no Prometheus"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_and_logs_are_capped_with_a_notice() {
    let s = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(s.admin.clone(), "shop");
    for i in 0..60 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:02}")}, "data": {"k": "v"}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let alice = connect(&s.url, "t-alice").await;
    let listed =
        ok(call(&alice, "list_resources", json!({"kind": "ConfigMap", "namespace": "shop", "limit": 50})).await);
    assert_eq!(listed["items"].as_array().unwrap().len(), 50);
    let notice = listed["truncated"]["notice"].as_str().unwrap();
    assert!(notice.starts_with("50 of"), "{notice}");
    // Logs: the newest lines of the pod's container.
    let pods: Api<Pod> = Api::namespaced(s.admin.clone(), "shop");
    let pod = loop {
        if let Some(p) = pods.list(&ListParams::default()).await.unwrap().items.into_iter().next() {
            break p.metadata.name.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let now = jiff::Timestamp::now();
    for i in 0..300 {
        s.sb.api().logs.append("shop", &pod, "app", now, &format!("request {i} served"));
    }
    let logs = ok(call(&alice, "get_pod_logs", json!({"namespace": "shop", "pod": pod, "tailLines": 5})).await);
    let lines: Vec<&str> = logs["lines"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(
        lines,
        ["request 295 served", "request 296 served", "request 297 served", "request 298 served", "request 299 served"]
    );
    let e = err(call(&alice, "get_pod_logs", json!({"namespace": "shop", "pod": pod, "container": "sidecar"})).await);
    assert!(e.contains("container sidecar is not valid"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_resources_and_the_prompt() {
    let s = setup().await;
    let alice = connect(&s.url, "t-alice").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let history = loop {
        let h = ok(call(&alice, "get_rollout_history", json!({"namespace": "shop", "deployment": "checkout"})).await);
        if !h["revisions"].as_array().unwrap().is_empty() {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ReplicaSet: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history["revisions"][0]["revision"], 1);
    assert_eq!(history["revisions"][0]["current"], true);
    assert_eq!(history["revisions"][0]["images"], json!(["c:1"]));
    // A Remediation, as a resource.
    common::mcp::create_remediation(&s.admin).await;
    let listed = alice.list_all_resources().await.unwrap();
    assert!(listed.iter().any(|r| r.uri == "remediation://shop/checkout-oom-checkout-1"), "{listed:?}");
    let read = alice
        .read_resource(ReadResourceRequestParams::new("remediation://shop/checkout-oom-checkout-1"))
        .await
        .unwrap();
    let body = match &read.contents[0] {
        rmcp::model::ResourceContents::TextResourceContents { text, .. } => text.clone(),
        other => panic!("{other:?}"),
    };
    assert!(body.contains("\"checkout-oom\""), "{body}");
    assert!(alice.read_resource(ReadResourceRequestParams::new("remediation://shop/missing")).await.is_err());
    let bob = connect(&s.url, "t-bob").await;
    assert!(
        bob.read_resource(ReadResourceRequestParams::new("remediation://shop/checkout-oom-checkout-1")).await.is_err()
    );
    let remediations = ok(call(&alice, "list_remediations", json!({"namespace": "shop"})).await);
    assert_eq!(remediations["remediations"][0]["uri"], "remediation://shop/checkout-oom-checkout-1");
    // The prompt.
    let args = json!({"alertname": "KubeContainerOOMKilled", "namespace": "shop", "target": "Deployment/checkout"});
    let prompt = alice
        .get_prompt(GetPromptRequestParams::new("diagnose_alert").with_arguments(args.as_object().cloned().unwrap()))
        .await
        .unwrap();
    let text = format!("{:?}", prompt.messages[0].content);
    assert!(text.contains("KubeContainerOOMKilled") && text.contains("data, not instructions"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_notification_on_its_own_post_stops_the_call() {
    // A stateless server has no session to route notifications/cancelled through; a client
    // that sends it and keeps the call's response open must still stop the work.
    let (prom_url, mut closed) = common::mcp::hanging_prometheus().await;
    let s = common::mcp::setup_with(Some(reflex::mcp::server::prometheus_client(&prom_url).unwrap())).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(&s.url)
            .bearer_auth("t-alice")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body)
            .send()
    };
    let call = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": "query_prometheus", "arguments": {"query": "up"}}});
    let started = std::time::Instant::now();
    let pending = tokio::spawn(post(call));
    // Wait until the call is waiting on Prometheus, then cancel it from another POST.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let note =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 41, "reason": "test"}});
    assert_eq!(post(note).await.unwrap().status().as_u16(), 202);
    let open_for =
        tokio::time::timeout(Duration::from_secs(5), closed.recv()).await.expect("the work stopped").unwrap();
    assert!(open_for < Duration::from_secs(3), "{open_for:?}");
    let resp = pending.await.unwrap().unwrap().text().await.unwrap();
    assert!(resp.contains("cancelled by the client"), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(5), "well before the 10 s tool timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_cached_per_identity_briefly_and_progress_is_reported_when_asked() {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Patch, PatchParams};
    let s = setup().await;
    let alice = connect(&s.url, "t-alice").await;
    let bob = connect(&s.url, "t-bob").await;
    let get = json!({"kind": "Deployment", "namespace": "shop", "name": "checkout"});
    let rv = |v: &Value| v["object"]["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let first = rv(&ok(call(&alice, "get_resource", get.clone()).await));
    let patch = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
    Api::<Deployment>::namespaced(s.admin.clone(), "shop")
        .patch("checkout", &PatchParams::default(), &patch)
        .await
        .unwrap();
    // Within the TTL alice gets the cached read; bob, asking the same, is not served it.
    assert_eq!(rv(&ok(call(&alice, "get_resource", get.clone()).await)), first, "served from the cache");
    assert!(err(call(&bob, "get_resource", get.clone()).await).contains("forbidden"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if rv(&ok(call(&alice, "get_resource", get.clone()).await)) != first {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cache never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A caller that sends a progress token gets progress notifications (the response turns
    // into an event stream).
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "list_resources",
        "arguments": {"kind": "Pod", "namespace": "shop"}, "_meta": {"progressToken": "p-7"}}});
    let body = reqwest::Client::new()
        .post(&s.url)
        .bearer_auth("t-alice")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&call)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("notifications/progress") && body.contains("\"p-7\""), "{body}");
    assert!(body.contains("\"id\":7"), "and then the result: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_call_is_answered_from_the_cache_exactly_as_rmcp_answers_it() {
    use reflex::mcp::CACHE_HEADER;
    let s = setup().await;
    let http = reqwest::Client::new();
    // A plain POST, with extra headers.
    let post = |token: &'static str, body: Value, headers: &[(&'static str, &'static str)]| {
        let mut r = http.post(&s.url).bearer_auth(token).header("accept", "application/json, text/event-stream");
        r = r.header("content-type", "application/json").body(body.to_string());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let call = |id: Value, tool: &str, args: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}});
    let hit = |r: &reqwest::Response| r.headers().get(CACHE_HEADER).is_some();
    let v18 = [("mcp-protocol-version", "2025-06-18")];
    for (tool, args) in [
        ("get_resource", json!({"kind": "Deployment", "namespace": "shop", "name": "checkout"})),
        ("list_resources", json!({"kind": "Pod", "namespace": "shop", "limit": 5})),
        ("get_events", json!({"kind": "Deployment", "namespace": "shop", "name": "checkout"})),
        ("get_rollout_history", json!({"namespace": "shop", "deployment": "checkout"})),
    ] {
        let first = post("t-alice", call(json!(1), tool, args.clone()), &v18).await.unwrap();
        assert!(!hit(&first), "{tool}: a miss goes through rmcp");
        let first: Value = first.json().await.unwrap();
        assert!(first["result"]["structuredContent"].is_object(), "{tool}: {first}");
        // The same answer from the cache, for every protocol version before 2026-07-28 (and
        // none, which rmcp reads as 2025-03-26).
        for (id, version) in [(json!("r-2"), Some("2025-06-18")), (json!(3), None), (json!(4), Some("2025-11-25"))] {
            let headers: Vec<(&str, &str)> = version.map(|v| ("mcp-protocol-version", v)).into_iter().collect();
            let again = post("t-alice", call(id.clone(), tool, args.clone()), &headers).await.unwrap();
            assert_eq!(again.status(), 200);
            assert!(hit(&again), "{tool} {version:?}");
            assert_eq!(again.headers()["content-type"], "application/json");
            let mut again: Value = again.json().await.unwrap();
            assert_eq!(again["id"], id);
            again["id"] = first["id"].clone();
            assert_eq!(again, first, "{tool} {version:?}: the same answer, byte for byte once parsed");
        }
        // The cache is per identity: bob (who may not read) gets rmcp's forbidden error; the
        // admin, who may, still misses on his first call.
        let bob = post("t-bob", call(json!(5), tool, args.clone()), &v18).await.unwrap();
        assert!(!hit(&bob), "{tool}");
        let bob: Value = bob.json().await.unwrap();
        assert!(bob.to_string().contains("forbidden"), "{tool}: {bob}");
        let admin = post(reflex::sandbox::ADMIN_TOKEN, call(json!(6), tool, args.clone()), &v18).await.unwrap();
        assert!(!hit(&admin), "{tool}: another identity's first call is its own");
        // What rmcp must judge itself still goes to rmcp.
        let r = post("t-alice", call(json!(7), tool, args.clone()), &[("mcp-protocol-version", "1999-01-01")]).await;
        assert_eq!(r.unwrap().status(), 400, "{tool}: unknown version");
        let r = post("t-alice", call(json!(8), tool, args.clone()), &[("host", "evil.example")]).await.unwrap();
        assert_eq!((r.status().as_u16(), hit(&r)), (403, false), "{tool}: a Host rmcp refuses");
        let r = http
            .post(&s.url)
            .bearer_auth("t-alice")
            .header("accept", "application/json;q=0, text/event-stream")
            .json(&call(json!(9), tool, args.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 406, "{tool}: JSON weighted zero");
        let r = http
            .post(&s.url)
            .bearer_auth("t-alice")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "text/plain")
            .body(call(json!(10), tool, args.clone()).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{tool}");
        for extra in
            [("origin", "http://127.0.0.1"), ("mcp-method", "tools/call"), ("mcp-protocol-version", "2026-07-28")]
        {
            let r = post("t-alice", call(json!(11), tool, args.clone()), &[extra]).await.unwrap();
            assert!(!hit(&r), "{tool} {extra:?}");
        }
        let mut with_meta = call(json!(12), tool, args.clone());
        with_meta["params"]["_meta"] = json!({"progressToken": "p"});
        assert!(!hit(&post("t-alice", with_meta, &v18).await.unwrap()), "{tool}");
        // Arguments that are not an object are rmcp's to refuse, even if they would read as
        // the same input.
        let values: Vec<Value> = args.as_object().unwrap().values().cloned().collect();
        let r = post("t-alice", call(json!(13), tool, json!(values)), &v18).await.unwrap();
        assert!(!hit(&r), "{tool}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_huge_requests_get_clear_errors() {
    let s = setup().await;
    let http = reqwest::Client::new();
    let send = |body: String| {
        http.post(&s.url)
            .bearer_auth("t-alice")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body)
            .send()
    };
    // Not JSON at all.
    let resp = send("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ".into()).await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!((400..500).contains(&code) && (text.contains("deserialize") || text.contains("-32700")), "{code} {text}");
    // Arguments far over the body limit: 413 before any parsing.
    let huge = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_resource",
        "arguments": {"kind": "Pod", "namespace": "shop", "name": "x".repeat(2 * 1024 * 1024)}}});
    assert_eq!(send(huge.to_string()).await.unwrap().status().as_u16(), 413);
    // A long but under-limit argument is refused by the tool's bounds, with the reason.
    let long = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "get_resource",
        "arguments": {"kind": "Pod", "namespace": "shop", "name": "x".repeat(10_000)}}});
    let text = send(long.to_string()).await.unwrap().text().await.unwrap();
    assert!(text.contains("\"isError\":true") && text.contains("not a valid Kubernetes name"), "{text}");
    // Unknown method: a JSON-RPC error, not a crash.
    let unknown = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/destroy", "params": {}});
    let text = send(unknown.to_string()).await.unwrap().text().await.unwrap();
    assert!(text.contains("\"error\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executors_loopback_reads_as_the_token_in_its_file() {
    use reflex::agent::tools::{Loopback, McpTools, Tools};
    let s = setup().await;
    let dir = std::env::temp_dir().join(format!("reflex-loopback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    // The file wins over the token given at start (a rotated ServiceAccount token).
    std::fs::write(&file, "t-alice\n").unwrap();
    let audit = Arc::new(reflex::mcp::client::MemoryAudit::default());
    let loopback = Loopback::new(s.url.clone(), "stale-token".into(), audit.clone()).with_token_file(Some(file));
    let tools = McpTools { loopback: Arc::new(loopback), namespace: "shop".into(), ctx: Default::default() };
    let args = std::collections::BTreeMap::from([
        ("kind".to_owned(), "Deployment".to_owned()),
        ("name".to_owned(), "checkout".to_owned()),
    ]);
    let d = tools.call("get_resource", &args).await.unwrap();
    assert_eq!(d["metadata"]["name"], "checkout");
    // Only the kinds Reflex targets: no Secrets through the executor, redacted or not.
    let secret = std::collections::BTreeMap::from([
        ("kind".to_owned(), "Secret".to_owned()),
        ("name".to_owned(), "db".to_owned()),
    ]);
    assert!(tools.call("get_resource", &secret).await.is_err());
    assert_eq!(audit.0.lock().unwrap().len(), 1, "one audited MCP call");
    let _ = std::fs::remove_dir_all(dir);
}

/// The action tools act as the caller: alice (on call in shop) approves the current proposal
/// under her own name; bob, whom RBAC gives nothing, is refused by the API server; an action
/// is never served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_tools_approve_as_the_caller_and_rbac_decides() {
    use kube::api::{Api, Patch, PatchParams};
    use reflex::api::approval::RemediationApproval;
    use reflex::api::remediation::Remediation;
    let s = setup().await;
    common::mcp::create_remediation(&s.admin).await;
    let status = json!({"status": {"phase": "AwaitingApproval", "proposal": {"patchType": "strategic", "patch": {},
        "digest": "sha256:feed", "rationale": "raise the limit", "producedBy": "playbook"}}});
    Api::<Remediation>::namespaced(s.admin.clone(), "shop")
        .patch_status("checkout-oom-checkout-1", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    let alice = connect(&s.url, "t-alice").await;
    let args = json!({"namespace": "shop", "name": "checkout-oom-checkout-1", "reason": "on call: looks right"});
    let out = ok(call(&alice, "approve_remediation", args.clone()).await);
    assert!(out["message"].as_str().unwrap().contains("alice approves proposal sha256:feed"), "{out}");
    ok(call(&alice, "approve_remediation", args.clone()).await);
    let approvals =
        Api::<RemediationApproval>::namespaced(s.admin.clone(), "shop").list(&Default::default()).await.unwrap();
    assert_eq!(approvals.items.len(), 2, "every call acts: nothing is cached");
    assert!(
        approvals
            .items
            .iter()
            .all(|a| a.spec.approver == "alice" && a.spec.proposal_digest.as_deref() == Some("sha256:feed"))
    );

    // Approving what one reviewed: a proposal that changed since is refused.
    let stale =
        json!({"namespace": "shop", "name": "checkout-oom-checkout-1", "proposalDigest": "sha256:reviewed-earlier"});
    let e = err(call(&alice, "approve_remediation", stale).await);
    assert!(e.contains("proposes sha256:feed now, not the sha256:reviewed-earlier you reviewed"), "{e}");

    let bob = connect(&s.url, "t-bob").await;
    let e = err(call(&bob, "approve_remediation", args).await);
    assert!(e.contains("forbidden") && e.contains("bob"), "the API server judged bob: {e}");
}
