//! The OTLP/gRPC trace receiver (tests/peers/otlp_receiver.py: the official OpenTelemetry
//! proto definitions served with grpcio) as a child process, and the spans it prints.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The receiver; it stops when dropped.
pub struct Receiver {
    child: tokio::process::Child,
    pub port: u16,
    /// Every span received, as the receiver prints it.
    pub spans: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Receiver {
    /// Closes its stdin (it stops) and waits for it.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

pub async fn receiver() -> Receiver {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/peers/otlp_receiver.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the OTLP receiver starts (make prereqs installs opentelemetry-proto and grpcio)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the receiver says its port within 30s")
        .expect("its stdout")
        .expect("a line");
    let port = serde_json::from_str::<Value>(&first).expect("json")["port"].as_u64().expect("a port") as u16;
    let (tx, spans) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(span) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(span);
            }
        }
    });
    Receiver { child, port, spans }
}
