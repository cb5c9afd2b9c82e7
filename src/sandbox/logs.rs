//! Container logs for `GET .../pods/NAME/log`: the sandbox runs no containers, so what a
//! container "printed" is whatever the test or scenario appended.
//!
//! Contract: lines are kept per (namespace, pod, container), newest last, at most
//! [`MAX_LINES`] each (oldest dropped). [`PodLogs::read`] applies the kubelet's query
//! semantics: `sinceSeconds` first, then `tailLines`, then `limitBytes`, with
//! `timestamps=true` prefixing each line with its RFC 3339 time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use jiff::Timestamp;

/// Lines kept per container.
pub const MAX_LINES: usize = 10_000;

type Key = (String, String, String);

#[derive(Default)]
pub struct PodLogs {
    lines: Mutex<HashMap<Key, VecDeque<(Timestamp, String)>>>,
}

/// A log query.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub since_seconds: Option<i64>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
    pub timestamps: bool,
}

impl PodLogs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<(Timestamp, String)>>> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `container` of `namespace/pod` printed `line` at `at`.
    pub fn append(&self, namespace: &str, pod: &str, container: &str, at: Timestamp, line: &str) {
        let mut all = self.lock();
        let lines = all.entry((namespace.into(), pod.into(), container.into())).or_default();
        lines.push_back((at, line.to_owned()));
        while lines.len() > MAX_LINES {
            lines.pop_front();
        }
    }

    /// The log text a kubelet would return at `now`.
    pub fn read(&self, namespace: &str, pod: &str, container: &str, q: &LogQuery, now: Timestamp) -> String {
        let all = self.lock();
        let Some(lines) = all.get(&(namespace.into(), pod.into(), container.into())) else { return String::new() };
        let since = q.since_seconds.and_then(|s| now.checked_sub(jiff::SignedDuration::from_secs(s)).ok());
        let picked: Vec<&(Timestamp, String)> = lines.iter().filter(|(t, _)| since.is_none_or(|s| *t >= s)).collect();
        let skip = q.tail_lines.map_or(0, |n| picked.len().saturating_sub(n.max(0) as usize));
        let mut out = String::new();
        for (t, line) in &picked[skip..] {
            let next = if q.timestamps { format!("{t} {line}\n") } else { format!("{line}\n") };
            if q.limit_bytes.is_some_and(|l| (out.len() + next.len()) as i64 > l) {
                break;
            }
            out.push_str(&next);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_then_tail_then_bytes() {
        let logs = PodLogs::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for i in 0..10 {
            let at = t0.checked_add(jiff::SignedDuration::from_secs(i * 10)).unwrap();
            logs.append("shop", "p", "app", at, &format!("line {i}"));
        }
        let now = t0.checked_add(jiff::SignedDuration::from_secs(95)).unwrap();
        let q = |since, tail, bytes| LogQuery {
            since_seconds: since,
            tail_lines: tail,
            limit_bytes: bytes,
            timestamps: false,
        };
        assert_eq!(logs.read("shop", "p", "app", &q(Some(30), None, None), now), "line 7\nline 8\nline 9\n");
        assert_eq!(logs.read("shop", "p", "app", &q(None, Some(2), None), now), "line 8\nline 9\n");
        assert_eq!(logs.read("shop", "p", "app", &q(None, Some(3), Some(14)), now), "line 7\nline 8\n");
        assert_eq!(logs.read("shop", "p", "other", &q(None, None, None), now), "");
    }
}
