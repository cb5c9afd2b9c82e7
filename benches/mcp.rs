#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo bench --bench mcp`: the same context tool (`get_resource` of a Deployment, read
//! from the same sandbox API) served by Reflex's MCP server and by an equivalent server
//! written with the official Python SDK's FastMCP (`tests/peers/mcp_server.py`), driven by
//! the same load generator in the same run at 1, 16 and 64 concurrent sessions. Each session
//! initializes once and then calls the tool back to back over its own HTTP connection
//! (stateless streamable HTTP, JSON responses, bearer token). Bounded: a fixed time per phase.
//! Reflex runs twice: with its 2 s read-through cache (as shipped) and with it off, so every
//! call reaches the API server as the Python peer's do. Prints p50/p95/p99 and calls/s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reflex::mcp::identity::Identities;
use reflex::mcp::server::{Backends, ReflexMcp};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const PHASE: Duration = Duration::from_secs(3);
const SESSIONS: [usize; 3] = [1, 16, 64];

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    http.post(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(body)
        .send()
        .await
        .expect("request")
}

/// One session: initialize, then call until `until`; latencies of the calls.
async fn session(url: String, until: Instant) -> Vec<Duration> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
        "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    assert!(post(&http, &url, &init).await.status().is_success());
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = post(&http, &url, &note).await;
    let mut lat = Vec::new();
    let mut id = 1u64;
    while Instant::now() < until {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "get_resource",
            "arguments": {"kind": "Deployment", "namespace": "shop", "name": "checkout"}}});
        let t = Instant::now();
        let resp = post(&http, &url, &call).await;
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["result"]["structuredContent"]["object"]["metadata"]["name"], "checkout", "{body}");
        lat.push(t.elapsed());
        id += 1;
    }
    lat
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn phase(name: &str, url: &str, sessions: usize) -> f64 {
    let started = Instant::now();
    let until = started + PHASE;
    let tasks: Vec<_> = (0..sessions).map(|_| tokio::spawn(session(url.to_owned(), until))).collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let rate = lat.len() as f64 / elapsed;
    println!(
        "{name:<28} {sessions:>3} sessions  {rate:>8.0} calls/s   p50 {:>7.2} ms   p95 {:>7.2} ms   p99 {:>7.2} ms   ({} calls)",
        pct(&lat, 0.5),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        lat.len()
    );
    rate
}

async fn serve(server: ReflexMcp, ids: Arc<Identities>) -> String {
    let router = reflex::mcp::router(server, ids, vec![], tokio_util::sync::CancellationToken::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("MCP benchmark: run with `cargo bench --bench mcp`");
        return;
    }
    reflex::install_crypto_provider();
    let sb = Sandbox::start(Config::default()).await.unwrap();
    sb.install_crds().unwrap();
    let admin = sb.client(ADMIN_TOKEN).await.unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({"metadata": {"name": "checkout"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "app", "image": "c:1"}]}}}}))
    .unwrap();
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), "shop")
        .create(&Default::default(), &d)
        .await
        .unwrap();
    let ids = Arc::new(Identities::new(admin.clone(), sb.config(ADMIN_TOKEN).await.unwrap()));
    let backends = Backends { prometheus: None, operator: Some(admin.clone()), metrics: None };
    let cached = serve(ReflexMcp::new(backends.clone()), ids.clone()).await;
    let uncached = serve(ReflexMcp::new(backends).with_cache_ttl(Duration::ZERO), ids).await;

    // The Python peer reads the same sandbox with the same token.
    let dir = std::env::temp_dir().join(format!("reflex-mcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, sb.ca_pem()).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run `make prereqs` first (it installs the Python MCP SDK into .venv)");
    let mut child = tokio::process::Command::new(python)
        .arg(root.join("tests/peers/mcp_server.py"))
        .args(["--port", "0", "--kube-url", &sb.url(), "--kube-token", ADMIN_TOKEN, "--kube-ca"])
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next_line().await.unwrap().unwrap();
    let peer = format!("http://127.0.0.1:{}/mcp", ready.strip_prefix("READY ").unwrap().trim());

    println!(
        "MCP benchmark: get_resource(Deployment shop/checkout) from the sandbox API, {}s per phase, loopback, same load generator",
        PHASE.as_secs()
    );
    // Warm all three (connections, caches, Python imports).
    for url in [&cached, &uncached, &peer] {
        let _ = session(url.clone(), Instant::now() + Duration::from_millis(300)).await;
    }
    let mut table = Vec::new();
    for n in SESSIONS {
        let r_cached = phase("reflex (2 s cache, as shipped)", &cached, n).await;
        let r_uncached = phase("reflex (cache off)", &uncached, n).await;
        let py = phase("python SDK FastMCP", &peer, n).await;
        table.push((n, r_cached / py, r_uncached / py));
    }
    for (n, a, b) in table {
        println!("{n:>3} sessions: reflex {a:.1}x the Python SDK's throughput (cache off: {b:.1}x)");
    }
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}
