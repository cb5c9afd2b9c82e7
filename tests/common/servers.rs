//! Real servers for tests: start a process (stopped when dropped), wait for a condition
//! with a deadline, a free loopback port, a scratch directory.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, stopped when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn start(bin: &str, args: &[String], log: &Path) -> Server {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {bin} ({e}); `make test` installs it (apt-get install prometheus prometheus-alertmanager)"
            )
        });
    Server(child)
}

pub async fn until<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "reflex-am-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Prometheus (Debian's package) on a free loopback port with `config` (its rule files
/// written beside it), logging into `dir`, ready when this returns; and its base URL.
pub async fn prometheus(dir: &Path, config: &str) -> (Server, String) {
    let port = free_port();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let server = start(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &dir.join("prometheus.log"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until("Prometheus to be ready", Duration::from_secs(30), async || {
        http.get(format!("{url}/-/ready")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    (server, url)
}

/// Alertmanager (Debian's package) with `config`, on loopback, ready; its base URL.
pub async fn alertmanager(dir: &Path, config: &str) -> (Server, String) {
    let port = free_port();
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
    let server = start(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".into(),
        ],
        &dir.join("alertmanager.log"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until("Alertmanager to be ready", Duration::from_secs(30), async || {
        http.get(format!("{url}/-/ready")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    (server, url)
}

/// An Alertmanager route to Reflex's webhook at `url`, with the bearer token in `dir/token`
/// and resolutions sent; `timing` is the route's grouping and repeat lines.
pub fn reflex_route(dir: &Path, url: &str, timing: &str) -> String {
    format!(
        "route:\n  receiver: reflex\n{timing}receivers:\n  - name: reflex\n    webhook_configs:\n      - url: {url}\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
        dir.join("token").display()
    )
}
