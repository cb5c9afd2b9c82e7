//! Which paths a change may touch: allowed patterns matched by whole keys, the fields always
//! refused, the sensitive ones, and free text.

use super::*;

/// Whether `path` is one of `patterns` or under one, as text: the playbook renderer's first
/// line. The safety check matches whole keys ([`covering`]).
pub fn path_allowed(path: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| p == path || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}[")))
}

/// How many leading segments of the path the longest covering pattern names, if any covers
/// it: a pattern covers a path when it is the path's first k segments joined by `.` — whole
/// keys only (`data.POOL` covers the key `POOL`, not `POOL.x`); a list segment may be
/// named with or without its `[*]`.
pub(super) fn covering(segments: &[String], patterns: &[String]) -> Option<usize> {
    let mut joined = String::new();
    let mut best = None;
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            joined.push('.');
        }
        let bare = format!("{joined}{}", seg.trim_end_matches("[*]"));
        joined.push_str(seg);
        if patterns.iter().any(|p| *p == joined || *p == bare) {
            best = Some(i + 1);
        }
    }
    best
}

/// Every node inside a value with its segments (as [`Change::segments`]).
pub(super) fn each_segments(v: &Value, segs: &mut Vec<String>, visit: &mut dyn FnMut(&[String])) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                segs.push(k.clone());
                visit(segs);
                each_segments(child, segs, visit);
                segs.pop();
            }
        }
        Value::Array(items) => {
            if let Some(last) = segs.last_mut() {
                last.push_str("[*]");
                for item in items {
                    each_segments(item, segs, visit);
                }
                if let Some(last) = segs.last_mut() {
                    last.truncate(last.len() - 3);
                }
            }
        }
        _ => {}
    }
}

/// Field names (any depth) whose change is never allowed, and why.
pub(super) fn forbidden(segments: &[String]) -> Option<&'static str> {
    let bare: Vec<&str> = segments.iter().map(|s| s.trim_end_matches("[*]")).collect();
    for (i, s) in bare.iter().enumerate() {
        match *s {
            "securityContext" => return Some("a security context (privilege, capabilities, user)"),
            "hostNetwork" | "hostPID" | "hostIPC" | "hostUsers" => return Some("host access"),
            "hostPath" | "hostPort" => return Some("host access"),
            "serviceAccountName" | "serviceAccount" => return Some("a ServiceAccount change"),
            "secretKeyRef"
            | "secretRef"
            | "secret"
            | "secretName"
            | "nodePublishSecretRef"
            | "imagePullSecrets"
            | "projected" => return Some("a Secret reference"),
            "privileged" | "capabilities" | "allowPrivilegeEscalation" => return Some("privilege escalation"),
            "ephemeralContainers" => return Some("an ephemeral (debug) container"),
            "nodeSelector" | "nodeName" => return Some("choosing the nodes pods are scheduled on"),
            "hostAliases" | "dnsConfig" | "dnsPolicy" => return Some("redirecting the pod's name resolution"),
            "gitRepo" | "csi" | "nfs" | "iscsi" | "rbd" | "cephfs" | "flexVolume" | "image"
                if i > 0 && segments[i - 1] == "volumes[*]" =>
            {
                return Some("a volume from outside the cluster's storage");
            }
            "selector" if i == 1 && bare[0] == "spec" => return Some("changing the selector (orphaning pods)"),
            "ownerReferences" | "finalizers" if i == 1 && bare[0] == "metadata" => {
                return Some("changing ownership or finalizers");
            }
            _ => {}
        }
    }
    match bare.as_slice() {
        ["metadata", "namespace"] => Some("moving to another namespace"),
        ["metadata", "name"] => Some("renaming the object"),
        ["binaryData", ..] => Some("binary configuration data"),
        _ => None,
    }
}

/// Fields that change only where a playbook's allowed path names them (not through a
/// parent): the segment's index and what it is.
pub(super) fn sensitive(segments: &[String]) -> Option<(usize, &'static str)> {
    let bare: Vec<&str> = segments.iter().map(|s| s.trim_end_matches("[*]")).collect();
    bare.iter().enumerate().find_map(|(i, s)| {
        let why = match *s {
            "labels" | "annotations" => "a label or annotation (selectors, injectors and controllers act on them)",
            "volumes" | "volumeMounts" | "volumeDevices" => "a volume or its mount",
            "envFrom" => "environment from a whole ConfigMap or Secret",
            "livenessProbe" | "readinessProbe" | "startupProbe" => "a probe",
            "lifecycle" => "a lifecycle hook (it runs commands)",
            "schedulerName"
            | "hostname"
            | "subdomain"
            | "topologySpreadConstraints"
            | "resourceClaims"
            | "tolerations"
            | "affinity"
            | "priorityClassName"
            | "priority"
            | "preemptionPolicy"
            | "runtimeClassName"
            | "overhead" => "where or how pods are scheduled and run",
            "claims" if i > 0 && bare[i - 1] == "resources" => "a resource claim",
            "automountServiceAccountToken" => "mounting the ServiceAccount token",
            "shareProcessNamespace" => "sharing the process namespace between containers",
            "paused" if i == 1 && bare[0] == "spec" => "pausing the rollout",
            _ => return None,
        };
        Some((i, why))
    })
}

/// Text that is not a number ([`numeric_at`] the changed field), inside a changed value (an
/// object's own fields are changes of their own, and judged as such).
pub(super) fn free_text(segments: &[String], v: &Value, top: bool) -> Option<String> {
    match v {
        Value::String(s) if numeric_at(segments, v).is_none() => Some(s.clone()),
        Value::Array(items) => items.iter().find_map(|i| free_text(segments, i, false)),
        Value::Object(m) if !top => m.values().find_map(|x| free_text(segments, x, false)),
        _ => None,
    }
}
