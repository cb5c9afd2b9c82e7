//! Resolving each alert's target through the MCP reader, bounded in questions and time,
//! with what was resolved remembered for an hour.

use super::*;

/// The targets of this delivery's matches with policies that resolve them from the alert's
/// labels: each distinct (namespace, naming labels, kinds) read once, eight at a time, all
/// within [`RESOLVE_WITHIN`], at most [`MAX_QUESTIONS`] per delivery; remembered for repeats. A
/// resolved alert reads nothing (its Remediation is found by fingerprint, or by what is
/// remembered).
pub(super) async fn resolve_targets(s: &Shared, payload: &Payload, policies: &[PolicyRef]) -> Resolved {
    use futures::StreamExt;
    let mut wanted: BTreeMap<ResolutionKey, Vec<Match>> = BTreeMap::new();
    let mut inputs: BTreeMap<ResolutionKey, Question> = BTreeMap::new();
    let mut out = Resolved::new();
    for a in &payload.alerts {
        for pr in policies.iter().filter(|pr| resolves(pr) && matches(pr, a)) {
            let naming: BTreeMap<String, String> = a
                .labels
                .iter()
                .filter(|(k, _)| NAMING_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let kinds = pr.policy.target_kinds.clone();
            let key = (pr.namespace.clone(), format!("{naming:?}"), format!("{kinds:?}"));
            let who = (pr.namespace.clone(), pr.name.clone(), a.fingerprint.clone());
            if a.status == "resolved" {
                if let Some(known) = s.resolutions.get(&key).await {
                    out.insert(who, known);
                }
                continue;
            }
            if !inputs.contains_key(&key) && inputs.len() >= MAX_QUESTIONS {
                out.insert(
                    who,
                    Err(Unresolved {
                        reason: "TooMany",
                        message: format!("more than {MAX_QUESTIONS} targets to resolve in one delivery"),
                    }),
                );
                continue;
            }
            wanted.entry(key.clone()).or_default().push(who);
            inputs.insert(key, (pr.namespace.clone(), naming, kinds));
        }
    }
    let deadline = tokio::time::Instant::now() + RESOLVE_WITHIN;
    let results: Vec<_> = futures::stream::iter(inputs)
        .map(|(key, (namespace, labels, kinds))| async move {
            let found = s
                .resolutions
                .get_with(key.clone(), async {
                    let Some(reader) = &s.reader else {
                        return Err(Unresolved {
                            reason: "ReadFailed",
                            message: "this intake has no reader to resolve targets with".to_owned(),
                        });
                    };
                    match tokio::time::timeout_at(deadline, resolve(reader.as_ref(), &namespace, &labels, &kinds)).await
                    {
                        Ok(r) => r,
                        Err(_) => Err(Unresolved {
                            reason: "ReadFailed",
                            message: format!(
                                "reading what the alert names took longer than {}s",
                                RESOLVE_WITHIN.as_secs()
                            ),
                        }),
                    }
                })
                .await;
            (key, found)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (key, found) in results {
        for who in wanted.remove(&key).unwrap_or_default() {
            out.insert(who, found.clone());
        }
    }
    out
}

/// Most distinct targets one delivery resolves.
const MAX_QUESTIONS: usize = 64;

/// Resolutions are kept an hour; failures ten seconds (a Pod appearing a moment later, or a
/// reader that was down, is tried again soon).
pub(super) struct ResolutionExpiry;

impl moka::Expiry<ResolutionKey, Resolution> for ResolutionExpiry {
    fn expire_after_create(&self, _: &ResolutionKey, value: &Resolution, _: std::time::Instant) -> Option<Duration> {
        Some(if value.is_ok() { RESOLUTION_TTL } else { Duration::from_secs(10) })
    }
}

/// What a delivery asked of a Remediation it waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    Create,
    Observe,
    Resolve,
}
