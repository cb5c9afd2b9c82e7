#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo bench --bench footprint`: what `reflex run` costs to keep and how it holds under
//! load, on the release binary, against the sandbox API server (in this process; the operator
//! is its own process, so its memory is its own). Bounded in count and time.
//!
//! - start to ready: spawn to the first 200 from `/readyz`, five starts;
//! - idle RSS: VmRSS of the ready operator after two idle seconds;
//! - scale: 1,000 Remediations created at once under a diagnose-only policy (trust observe, a
//!   playbook reading its Deployment through MCP): Remediations finished per second,
//!   reconcile p99 (the operator's own `reflex_reconcile_duration_seconds`), peak RSS growth
//!   per Remediation, and intake's p99 for a delivery before and while they run;
//! - loop overhead per Remediation: the OOM scenario's spans exported over OTLP to a real
//!   receiver (tests/peers/otlp_receiver.py), each step's time in its own work (excluding the
//!   scenario's waits: the rollout and the verification window), and where diagnose spends it.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use reflex::api::Remediation;
use reflex::sandbox::{Config, Sandbox};
use serde_json::{Value, json};

#[path = "../tests/common/otlp.rs"]
mod otlp;

const REMEDIATIONS: usize = 1000;
const STARTS: usize = 5;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Operator {
    child: Child,
    base: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `reflex run` as the demo's operator identity; returns it once ready, and how long that took.
async fn operator(kubeconfig: &std::path::Path, http: &reqwest::Client) -> (Operator, Duration) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_reflex"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--insecure-webhook", "--no-leader-election"])
        .args(["--prometheus-url", "http://127.0.0.1:9", "--audit-log", "-"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let op = Operator { child, base };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", op.base)).send().await
            && r.status().is_success()
        {
            return (op, started.elapsed());
        }
        assert!(Instant::now() < deadline, "reflex run did not become ready in 30s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn delivery(alertname: &str, i: usize) -> Value {
    json!({"version": "4", "groupKey": format!("{{}}:{{alertname=\"{alertname}\"}}"), "truncatedAlerts": 0,
        "status": "firing", "receiver": "reflex", "groupLabels": {"alertname": alertname}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": [{"status": "firing",
        "labels": {"alertname": alertname, "namespace": "shop", "deployment": format!("probe-{i}")},
        "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph", "fingerprint": format!("{i:016x}")}]})
}

/// Latencies of `n` sequential deliveries of an alert no policy matches (intake answers after
/// parsing, matching and the queue, as for any alert).
async fn intake_latencies(http: &reqwest::Client, base: &str, n: usize, from: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in from..from + n {
        let body = delivery("BenchProbe", i);
        let t = Instant::now();
        let r = http.post(format!("{base}/alerts")).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "intake: {}", r.status());
        out.push(t.elapsed());
    }
    out
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The p99 of a Prometheus histogram from its buckets (the upper bound of the bucket it falls in).
fn histogram_p99(metrics: &str, name: &str) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets.iter().find(|(_, c)| *c >= 0.99 * total).map(|(le, _)| *le)
}

const PLAYBOOK: &str = r#"{"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook", "metadata": {"name": "look", "namespace": "shop"},
 "spec": {"description": "Read the Deployment; change nothing.", "targetKinds": ["Deployment"],
  "reads": [{"name": "target", "tool": "get_resource", "arguments": {"kind": "Deployment", "name": "{{ target.name }}"}}]}}"#;
const POLICY: &str = r#"{"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "look", "namespace": "shop"},
 "spec": {"match": {"alertnames": ["BenchLoad"]}, "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
  "playbook": "look", "trust": {"level": "observe"}, "limits": {"maxConcurrent": 1000, "cooldown": "0s",
  "maxRemediations": {"count": 10000, "window": "1h"}}}}"#;

async fn scale(sb: &Sandbox, kubeconfig: &std::path::Path, http: &reqwest::Client) {
    let admin = sb.client(reflex::sandbox::ADMIN_TOKEN).await.unwrap();
    for doc in [PLAYBOOK, POLICY] {
        reflex::demo::apply(&admin, &serde_json::from_str(doc).unwrap()).await.unwrap();
    }
    futures::stream::iter(0..REMEDIATIONS)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("w{i}"), "namespace": "shop"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": format!("w{i}")}},
                    "template": {"metadata": {"labels": {"app": format!("w{i}")}}, "spec": {"containers": [{"name": "app", "image": "w:1"}]}}}});
                reflex::demo::apply(&admin, &d).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (op, _) = operator(kubeconfig, http).await;
    let pid = op.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(pid);
    let idle = intake_latencies(http, &op.base, 300, 0).await;
    let idle_p99 = percentile(idle, 0.99);

    let api: Api<Remediation> = Api::namespaced(admin.clone(), "shop");
    let started = Instant::now();
    futures::stream::iter(0..REMEDIATIONS)
        .map(|i| {
            let api = api.clone();
            async move {
                let rem: Remediation = serde_json::from_value(json!({
                    "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation", "metadata": {"name": format!("r{i}"), "namespace": "shop"},
                    "spec": {"policyRef": {"name": "look"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("w{i}")},
                             "alert": {"name": "BenchLoad", "fingerprint": format!("{i:016x}"), "labels": {"deployment": format!("w{i}")},
                                       "startsAt": "2026-01-01T00:00:00Z"}}})).unwrap();
                // The sandbox sheds connections past its per-address share; a client retries.
                for attempt in 1.. {
                    match api.create(&Default::default(), &rem).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => break,
                        Err(e) if attempt < 10 => {
                            eprintln!("create r{i}: {e}; again");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("create r{i}: {e}"),
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    // Intake probed while the Remediations run; peak memory sampled meanwhile.
    let probe = {
        let (http, base) = (http.clone(), op.base.clone());
        tokio::spawn(async move { intake_latencies(&http, &base, 300, 1000).await })
    };
    let mut peak = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(300);
    let phases = loop {
        peak = peak.max(rss_kib(pid));
        let Ok(list) = api.list(&Default::default()).await else { continue };
        let done = list.items.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_terminal())).count();
        if done == REMEDIATIONS {
            let mut phases: BTreeMap<String, usize> = BTreeMap::new();
            for r in &list.items {
                let status = r.status.as_ref().unwrap();
                // The phase and why it ended there (the Ready condition's message, its first words).
                let why = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| {
                        // Grouped by what it says, without the object's own name.
                        let name = format!("Deployment/{}:", r.spec.target.name);
                        c.message.replace(&name, "Deployment/…:").chars().take(240).collect::<String>()
                    })
                    .unwrap_or_default();
                *phases.entry(format!("{} ({why})", status.phase)).or_default() += 1;
            }
            break phases;
        }
        assert!(Instant::now() < deadline, "{done} of {REMEDIATIONS} finished in 300s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    let busy_p99 = percentile(probe.await.unwrap(), 0.99);
    let metrics = http.get(format!("{}/metrics", op.base)).send().await.unwrap().text().await.unwrap();
    let reconcile_p99 = histogram_p99(&metrics, "reflex_reconcile_duration_seconds").unwrap_or(f64::NAN);
    let after = rss_kib(pid);
    println!(
        "scale: {REMEDIATIONS} Remediations created in {:.1}s, all finished in {:.1}s ({:.0}/s)",
        created.as_secs_f64(),
        elapsed.as_secs_f64(),
        REMEDIATIONS as f64 / elapsed.as_secs_f64()
    );
    for (phase, n) in &phases {
        println!("scale:   {n:>5} {phase}");
    }
    println!("scale: reconcile p99 <= {:.1} ms (histogram bucket)", reconcile_p99 * 1e3);
    println!(
        "scale: RSS idle {:.1} MiB, peak {:.1} MiB, after {:.1} MiB: {:.1} KiB per Remediation at peak ({:.1} KiB after)",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        (peak.saturating_sub(idle_rss)) as f64 / REMEDIATIONS as f64,
        (after.saturating_sub(idle_rss)) as f64 / REMEDIATIONS as f64
    );
    println!(
        "scale: intake p99 {:.2} ms idle, {:.2} ms while they ran ({:.2}x)",
        idle_p99.as_secs_f64() * 1e3,
        busy_p99.as_secs_f64() * 1e3,
        busy_p99.as_secs_f64() / idle_p99.as_secs_f64()
    );
}

/// The OOM scenario's spans, by name: the time each step spent in its own work.
async fn loop_overhead() {
    let mut receiver = otlp::receiver().await;
    let port = receiver.port;
    // The only subscriber of this process.
    let telemetry =
        reflex::telemetry::init_with(reflex::telemetry::LogFormat::Json, Some(&format!("http://127.0.0.1:{port}")))
            .unwrap();
    let scenario = reflex::demo::scenario::Scenario::built_in("oom").unwrap();
    let mut out = Vec::new();
    let outcome = reflex::demo::run(scenario, true, &mut out).await.unwrap();
    assert!(outcome.as_expected());
    // What the status write costs at the API server: the same apply, a GET, and a merge patch
    // of one field, as the operator, 20 times each, on the finished Remediation.
    if let Some(sb) = &outcome.sandbox {
        let client = sb.client("reflex-demo-operator").await.unwrap();
        let api: Api<Remediation> = Api::namespaced(client, "shop");
        let name = outcome.remediation.metadata.name.clone().unwrap();
        let mut rows: Vec<(&str, Duration)> = Vec::new();
        let status = api.get(&name).await.unwrap().status.unwrap();
        let apply = kube::api::PatchParams::apply(reflex::api::STATUS_MANAGER).force();
        for _ in 0..20 {
            let t = Instant::now();
            api.get(&name).await.unwrap();
            rows.push(("GET", t.elapsed()));
            let body = json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation", "metadata": {"name": name}, "status": status});
            let t = Instant::now();
            api.patch_status(&name, &apply, &kube::api::Patch::Apply(body)).await.unwrap();
            rows.push(("status apply (as write_status)", t.elapsed()));
            let t = Instant::now();
            let merge = kube::api::Patch::Merge(json!({"status": {"retests": 0}}));
            api.patch_status(&name, &Default::default(), &merge).await.unwrap();
            rows.push(("status merge patch (one field)", t.elapsed()));
        }
        let mut by: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        for (label, d) in rows {
            by.entry(label).or_default().push(d);
        }
        for (label, v) in by {
            println!("loop: API server: {label:<32} median {:.2} ms", percentile(v, 0.5).as_secs_f64() * 1e3);
        }
    }
    let trace = outcome.remediation.status.as_ref().unwrap().trace_id.clone().unwrap();
    telemetry.flush();
    let mut spans: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(span)) = tokio::time::timeout_at(deadline, receiver.spans.recv()).await {
        if span["traceId"] == trace.as_str() {
            spans.push(span);
        }
    }
    let ms = |s: &Value| {
        (s["endTimeUnixNano"].as_str().unwrap().parse::<u64>().unwrap()
            - s["startTimeUnixNano"].as_str().unwrap().parse::<u64>().unwrap()) as f64
            / 1e6
    };
    let mut by_name: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for s in &spans {
        let e = by_name.entry(s["name"].as_str().unwrap().to_owned()).or_default();
        e.0 += 1;
        e.1 += ms(s);
    }
    println!("loop: the OOM scenario's trace {trace}: {} spans", spans.len());
    for (name, (n, total)) in &by_name {
        println!("loop:   {name:<40} {n:>4} spans  {total:>9.1} ms");
    }
    let work: f64 = ["diagnose", "propose", "test", "gate", "snapshot", "deploy"]
        .iter()
        .filter_map(|n| by_name.get(*n))
        .map(|(_, t)| t)
        .sum::<f64>()
        + by_name.get("reconcile").map_or(0.0, |(_, t)| *t);
    println!("loop: work outside the waits (steps diagnose..deploy and every reconcile): {work:.1} ms");
    // Where a reconcile's time goes: its children, by name, over every reconcile.
    let reconciles: Vec<&Value> = spans.iter().filter(|s| s["name"] == "reconcile").collect();
    let mut inside: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for r in &reconciles {
        for c in spans.iter().filter(|s| s["parentSpanId"] == r["spanId"]) {
            let e = inside.entry(c["name"].as_str().unwrap().to_owned()).or_default();
            e.0 += 1;
            e.1 += ms(c);
        }
    }
    let by_phase =
        |phase: &str| reconciles.iter().filter(|r| r["attributes"]["phase"] == phase).map(|r| ms(r)).sum::<f64>();
    println!(
        "loop: {} reconciles, {:.1} ms; while Verifying {:.1} ms; inside them:",
        reconciles.len(),
        reconciles.iter().map(|r| ms(r)).sum::<f64>(),
        by_phase("Verifying")
    );
    for (name, (n, total)) in &inside {
        println!("loop:   {name:<40} {n:>4} spans  {total:>9.1} ms");
    }
    // Where diagnose's time goes: its children.
    for d in spans.iter().filter(|s| s["name"] == "diagnose") {
        println!("loop: diagnose {:.1} ms:", ms(d));
        for c in spans.iter().filter(|s| s["parentSpanId"] == d["spanId"]) {
            println!("loop:   {:<40} {:>7.1} ms", c["name"].as_str().unwrap(), ms(c));
            for g in spans.iter().filter(|s| s["parentSpanId"] == c["spanId"]) {
                println!("loop:     {:<38} {:>7.1} ms", g["name"].as_str().unwrap(), ms(g));
            }
        }
    }
    receiver.stop().await;
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("footprint benchmark: run with `cargo bench --bench footprint`");
        return;
    }
    reflex::install_crypto_provider();
    let rbac = reflex::sandbox::rbac::Table::from_yaml(reflex::demo::DEMO_RBAC).unwrap();
    let sb = Sandbox::start(Config { rbac, ..Default::default() }).await.unwrap();
    sb.install_crds().unwrap();
    let admin = sb.client(reflex::sandbox::ADMIN_TOKEN).await.unwrap();
    for ns in ["shop", "reflex-system"] {
        reflex::demo::apply(&admin, &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("reflex-footprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    sb.write_kubeconfig(&kubeconfig, "reflex-demo-operator").unwrap();
    let http = reqwest::Client::new();

    // FOOTPRINT_PARTS=start,scale,loop (default: all) runs only those parts.
    let parts = std::env::var("FOOTPRINT_PARTS").unwrap_or_else(|_| "start,scale,loop".into());
    let part = |name: &str| parts.split(',').any(|p| p == name);
    if part("start") {
        start(&kubeconfig, &http).await;
    }
    if part("scale") {
        scale(&sb, &kubeconfig, &http).await;
    }
    if part("loop") {
        loop_overhead().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

async fn start(kubeconfig: &std::path::Path, http: &reqwest::Client) {
    let mut starts = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..STARTS {
        let (op, ready) = operator(kubeconfig, http).await;
        starts.push(ready);
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.push(rss_kib(op.child.id()));
    }
    starts.sort();
    idle.sort_unstable();
    println!(
        "start to ready: median {:.1} ms (min {:.1}, max {:.1}; {STARTS} starts; target 200 ms)",
        starts[STARTS / 2].as_secs_f64() * 1e3,
        starts[0].as_secs_f64() * 1e3,
        starts[STARTS - 1].as_secs_f64() * 1e3
    );
    println!(
        "idle RSS: median {:.1} MiB (min {:.1}, max {:.1}; target 30 MB)",
        idle[STARTS / 2] as f64 / 1024.0,
        idle[0] as f64 / 1024.0,
        idle[STARTS - 1] as f64 / 1024.0
    );
}
