#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo bench --bench mcp`: the same context tool (`get_resource` of a Deployment, read
//! from the same sandbox API) served by Reflex's MCP server and by an equivalent server
//! written with the official Python SDK's FastMCP (`tests/peers/mcp_server.py`), driven by
//! the same load generator in the same run at 1, 16 and 64 concurrent sessions.
//!
//! The load generator is wrk (Debian's package), a separate process with one thread, so it
//! costs both servers the same and never shares their runtime. A session is one keep-alive
//! connection calling the tool back to back (both servers are stateless streamable HTTP with
//! JSON responses, so a call needs no prior `initialize`; each server is first checked with a
//! full MCP handshake and call). Every answer is checked (200 and the object's name in it);
//! a wrong answer fails the benchmark. Bounded: a fixed time per phase.
//! Reflex runs twice: with its 2 s read-through cache (as shipped) and with it off, so every
//! call reaches the API server as the Python peer's do. Prints p50/p95/p99 and calls/s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reflex::mcp::identity::Identities;
use reflex::mcp::server::{Backends, ReflexMcp};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const PHASE: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(1);
/// For a profiler: `MCP_BENCH_PROFILE=SECS` runs only the shipped Reflex server at 64 sessions
/// for SECS seconds.
const PROFILE: &str = "MCP_BENCH_PROFILE";
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

/// A full MCP exchange (initialize, initialized, one call) that must return the object.
async fn check(url: &str) {
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
        "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    assert!(post(&http, url, &init).await.status().is_success(), "{url}: initialize");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = post(&http, url, &note).await;
    let body: Value = post(&http, url, &serde_json::from_str(CALL).unwrap()).await.json().await.expect("json");
    assert_eq!(body["result"]["structuredContent"]["object"]["metadata"]["name"], "checkout", "{url}: {body}");
}

/// The call every session repeats.
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_resource","arguments":{"kind":"Deployment","namespace":"shop","name":"checkout"}}}"#;

/// wrk's script: the request, a check of every answer, and the figures in one line.
fn wrk_script() -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = '{CALL}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
wrk.headers["Authorization"] = "Bearer {ADMIN_TOKEN}"
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"name":"checkout"', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local wrong = 0
  for _, t in ipairs(threads) do wrong = wrong + t:get("bad") end
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    wrong, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"#
    )
}

/// One phase: `sessions` connections for `PHASE`; calls/s.
fn phase(name: &str, url: &str, sessions: usize, script: &std::path::Path, secs: u64) -> f64 {
    let out = std::process::Command::new("wrk")
        .args(["-t1", &format!("-c{sessions}"), &format!("-d{secs}s"), "--timeout", "10s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("wrk: {text}"));
    let f: Vec<u64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
    let (calls, micros, p50, p95, p99, wrong, errors) = (f[0], f[1], f[2], f[3], f[4], f[5], f[6]);
    assert_eq!((wrong, errors), (0, 0), "{name}: {wrong} wrong answers, {errors} socket errors");
    let rate = calls as f64 / (micros as f64 / 1e6);
    let ms = |us: u64| us as f64 / 1e3;
    println!(
        "{name:<30} {sessions:>3} sessions  {rate:>8.0} calls/s   p50 {:>7.2} ms   p95 {:>7.2} ms   p99 {:>7.2} ms   ({calls} calls)",
        ms(p50),
        ms(p95),
        ms(p99),
    );
    rate
}

async fn serve(server: ReflexMcp, ids: Arc<Identities>) -> String {
    let router = reflex::mcp::router(server, ids, vec![], tokio_util::sync::CancellationToken::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    // As the operator serves it: no Nagle delay, within the listener bounds (web::serve).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let _server = reflex::web::serve(
        listener,
        router,
        reflex::web::Limits::default(),
        tokio_util::sync::CancellationToken::new(),
    );
    url
}

/// The shipped binary's allocator, so the benchmark measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let backends = Backends {
        prometheus: None,
        operator: Some(admin.clone()),
        metrics: None,
        agents: None,
        tool_metrics: Default::default(),
    };
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
        "MCP benchmark: get_resource(Deployment shop/checkout) from the sandbox API (the Kubernetes stand-in), {}s per phase, loopback, load from wrk (one thread, its own process)",
        PHASE.as_secs()
    );
    for url in [&cached, &uncached, &peer] {
        check(url).await;
    }
    let script = dir.join("call.lua");
    std::fs::write(&script, wrk_script()).unwrap();
    // wrk blocks; the servers keep running on the runtime's workers meanwhile.
    // Each phase: one second of the same load unmeasured (connections, caches, the peer's
    // warm-up), the measured run, then a pause so a server still draining its backlog (the
    // Python peer, at 64 sessions) does not take CPU from the next phase.
    let run = |name: &'static str, url: String, n: usize| {
        let script = script.clone();
        tokio::task::spawn_blocking(move || {
            let _ = std::process::Command::new("wrk")
                .args(["-t1", &format!("-c{n}"), "-d1s", "--timeout", "10s", "-s"])
                .arg(&script)
                .arg(&url)
                .output();
            let rate = phase(name, &url, n, &script, PHASE.as_secs());
            std::thread::sleep(SETTLE);
            rate
        })
    };
    if let Some(secs) = std::env::var(PROFILE).ok().and_then(|s| s.parse().ok()) {
        println!("profiling: pid {}, {secs}s of 64 sessions on the shipped server", std::process::id());
        tokio::task::spawn_blocking(move || phase("reflex (2 s cache, as shipped)", &cached, 64, &script, secs))
            .await
            .unwrap();
        return;
    }
    let mut table = Vec::new();
    for n in SESSIONS {
        let r_cached = run("reflex (2 s cache, as shipped)", cached.clone(), n).await.unwrap();
        let r_uncached = run("reflex (cache off)", uncached.clone(), n).await.unwrap();
        let py = run("python SDK FastMCP", peer.clone(), n).await.unwrap();
        table.push((n, r_cached / py, r_uncached / py));
    }
    for (n, a, b) in table {
        println!("{n:>3} sessions: reflex {a:.1}x the Python SDK's throughput (cache off: {b:.1}x)");
    }
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}
