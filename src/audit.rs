//! The audit log: one JSON line per thing Reflex did that a person may have to account for —
//! a tool call, an LLM call, a delegation, a gate decision, an approval, a deploy, a rollback —
//! each with its Remediation's trace id, chained by hashes so that an edited, removed or
//! reordered record is detected.
//!
//! Contract: [`AuditLog::record`] appends `{"audit": 1, "seq", "time", "kind", "traceId",
//! "record", "prev", "hash"}` where `hash` is the SHA-256 of `prev` and the canonical JSON of
//! everything else, and `prev` is the previous record's `hash` (the first record of a chain
//! has [`GENESIS`]). Appending to an existing file continues its chain; each start on stdout
//! begins a new one (seq 0). [`verify`] — pure — re-derives every hash and link and names the
//! first line that does not hold; lines that are not audit records (other logs on stdout) are
//! skipped. A write that fails is logged and never blocks the loop. What it cannot see: the
//! tail of a chain cut off after its last record (anchor the last hash elsewhere for that).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `prev` of a chain's first record.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// What the rest of the operator writes audit records to.
pub trait Sink: Send + Sync {
    /// Appends one record of `kind` (`tool_call`, `llm_call`, `delegation`, `gate`,
    /// `approval`, `deploy`, `rollback`).
    fn record(&self, kind: &str, trace_id: Option<&str>, fields: Value);
}

/// Where the records go.
enum Out {
    Stdout,
    File(PathBuf),
}

struct Chain {
    seq: u64,
    prev: String,
}

/// A hash-chained audit log on stdout or in a file.
pub struct AuditLog {
    out: Out,
    chain: Mutex<Chain>,
}

/// The hash of a record: SHA-256 over its canonical JSON without `hash` (serde_json's object
/// keys are sorted, so the text is canonical).
fn hash_of(record: &Value) -> String {
    let mut body = record.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("hash");
    }
    let digest = Sha256::digest(body.to_string().as_bytes());
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl AuditLog {
    /// Records to stdout, a new chain from here.
    pub fn stdout() -> Self {
        Self { out: Out::Stdout, chain: Mutex::new(Chain { seq: 0, prev: GENESIS.to_owned() }) }
    }

    /// Records appended to `path`, continuing the chain its last record ends.
    ///
    /// # Errors
    /// The file exists and cannot be read, or its last record is not one.
    pub fn file(path: &Path) -> Result<Self, String> {
        let mut chain = Chain { seq: 0, prev: GENESIS.to_owned() };
        if path.exists() {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let last =
                std::io::BufReader::new(file).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).last();
            if let Some(line) = last {
                let v: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("{}: its last line is not an audit record: {e}", path.display()))?;
                let (Some(seq), Some(hash)) = (v["seq"].as_u64(), v["hash"].as_str()) else {
                    return Err(format!("{}: its last line is not an audit record", path.display()));
                };
                chain = Chain { seq: seq + 1, prev: hash.to_owned() };
            }
        }
        Ok(Self { out: Out::File(path.to_owned()), chain: Mutex::new(chain) })
    }

    fn write(&self, line: &str) -> std::io::Result<()> {
        match &self.out {
            Out::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()
            }
            Out::File(path) => {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                writeln!(f, "{line}")?;
                f.sync_data()
            }
        }
    }
}

impl Sink for AuditLog {
    fn record(&self, kind: &str, trace_id: Option<&str>, fields: Value) {
        let Ok(mut chain) = self.chain.lock() else {
            tracing::error!(kind, "the audit log's chain is poisoned; the record is lost");
            return;
        };
        let mut record = json!({
            "audit": 1,
            "seq": chain.seq,
            "time": k8s_openapi::jiff::Timestamp::now().to_string(),
            "kind": kind,
            "traceId": trace_id,
            "record": fields,
            "prev": chain.prev,
        });
        let hash = hash_of(&record);
        record["hash"] = json!(hash);
        match self.write(&record.to_string()) {
            Ok(()) => {
                chain.seq += 1;
                chain.prev = hash;
            }
            Err(e) => tracing::error!(kind, error = %e, "could not write an audit record"),
        }
    }
}

/// Records kept in memory, in order (tests and the demo).
#[derive(Default)]
pub struct MemorySink(Mutex<Vec<(String, Option<String>, Value)>>);

impl MemorySink {
    /// Every record so far: (kind, trace id, fields).
    pub fn records(&self) -> Vec<(String, Option<String>, Value)> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Sink for MemorySink {
    fn record(&self, kind: &str, trace_id: Option<&str>, fields: Value) {
        if let Ok(mut r) = self.0.lock() {
            r.push((kind.to_owned(), trace_id.map(str::to_owned), fields));
        }
    }
}

/// What [`verify`] found in a log that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    /// Chains (a new one starts at each stdout start).
    pub chains: u64,
    /// The last record's hash (anchor it to detect a cut tail).
    pub last: Option<String>,
}

/// The first line where a log does not hold, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct Tampered {
    pub line: usize,
    pub what: String,
}

/// Checks every audit record of `text`: its hash, its link to the record before, its sequence
/// number. Pure.
///
/// # Errors
/// The first record that was edited, removed (a gap) or moved (a broken link).
pub fn verify(text: &str) -> Result<Verified, Tampered> {
    let mut out = Verified { records: 0, chains: 0, last: None };
    let mut expected: Option<(u64, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v.get("audit") != Some(&json!(1)) {
            continue;
        }
        let tampered = |what: String| Tampered { line: line_no, what };
        let hash = v["hash"].as_str().ok_or_else(|| tampered("the record has no hash".into()))?;
        let seq = v["seq"].as_u64().ok_or_else(|| tampered("the record has no sequence number".into()))?;
        let prev = v["prev"].as_str().ok_or_else(|| tampered("the record has no link to the one before".into()))?;
        if hash_of(&v) != hash {
            return Err(tampered(format!("record {seq} was edited: its content does not hash to {hash}")));
        }
        match &expected {
            _ if seq == 0 && prev == GENESIS => out.chains += 1,
            Some((want, link)) if seq == *want && prev == link => {}
            Some((want, _)) if seq > *want => {
                return Err(tampered(format!("records {want} to {} are missing", seq - 1)));
            }
            Some(_) | None => {
                return Err(tampered(format!(
                    "record {seq} does not follow the record before it (removed, reordered or inserted)"
                )));
            }
        }
        expected = Some((seq + 1, hash.to_owned()));
        out.records += 1;
        out.last = Some(hash.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(n: u64) -> (tempdir::Dir, String) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("audit.jsonl");
        let log = AuditLog::file(&path).unwrap();
        for i in 0..n {
            log.record("deploy", Some("trace-1"), json!({"remediation": format!("shop/r-{i}")}));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        (dir, text)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!("reflex-audit-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn an_untouched_log_verifies_and_a_reopened_file_continues_its_chain() {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("audit.jsonl");
        AuditLog::file(&path).unwrap().record("gate", None, json!({"decision": "Approved"}));
        AuditLog::file(&path).unwrap().record("deploy", Some("t"), json!({"generation": 2}));
        let text = std::fs::read_to_string(&path).unwrap();
        let v = verify(&format!("some other log line\n{text}")).unwrap();
        assert_eq!((v.records, v.chains), (2, 1));
    }

    #[test]
    fn an_edited_record_is_caught() {
        let (_d, text) = log_of(3);
        let edited = text.replacen("shop/r-1", "shop/r-9", 1);
        let e = verify(&edited).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("record 1 was edited"), "{e}");
    }

    #[test]
    fn a_removed_record_is_caught() {
        let (_d, text) = log_of(4);
        let lines: Vec<&str> = text.lines().collect();
        let removed = [lines[0], lines[1], lines[3]].join("\n");
        let e = verify(&removed).unwrap_err();
        assert!(e.what.contains("records 2 to 2 are missing"), "{e}");
    }

    #[test]
    fn reordered_records_are_caught() {
        let (_d, text) = log_of(3);
        let lines: Vec<&str> = text.lines().collect();
        let reordered = [lines[0], lines[2], lines[1]].join("\n");
        assert!(verify(&reordered).is_err());
        // A record re-hashed after an edit still breaks the link of the one after it.
        let mut second: Value = serde_json::from_str(lines[1]).unwrap();
        second["record"]["remediation"] = json!("shop/forged");
        second["hash"] = json!(hash_of(&second));
        let forged = [lines[0].to_owned(), second.to_string(), lines[2].to_owned()].join("\n");
        let e = verify(&forged).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }
}
