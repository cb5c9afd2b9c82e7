//! The HTTP face of the sandbox: request parsing, authentication, authorization,
//! impersonation, content negotiation, and dispatch to [`super::api`], over axum.
//!
//! Contract: URLs, verbs, query parameters, headers, status codes and bodies follow
//! kube-apiserver: `/api/v1/...` and `/apis/{group}/{version}/...`, `?watch=true` streams
//! newline-delimited watch events, `Accept: ...;as=Table` gets server-side printing, every error
//! is a `Status`. The handler never panics on input: malformed bodies are 400, unknown paths 404,
//! wrong content types 415, bodies over 3 MiB 413.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::api::{Api, DeleteOptions, ListOptions, Outcome, PatchKind, WriteCtx, to_api};
use super::rbac::{Attributes, Table, UserInfo, forbidden_message};
use super::resources::{Behaviour, ResourceType};
use super::schema::FieldValidation;
use super::selectors::{FieldSelector, LabelSelector};
use super::ssa::Part;
use super::status::ApiError;
use super::store::{ChangeKind, ns_of};
use super::table::table;

mod review;
mod watch;

use review::*;
use watch::*;

/// Largest request body kube-apiserver accepts.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared server state.
pub struct State {
    pub api: Arc<Api>,
    pub rbac: Table,
    pub addr: String,
    pub bookmark_interval: Duration,
}

type Query = HashMap<String, String>;

/// A parsed resource request, like kube-apiserver's RequestInfo.
#[derive(Debug)]
struct Target {
    rt: Arc<ResourceType>,
    namespace: String,
    name: String,
    subresource: String,
}

fn respond(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `GET .../pods/NAME/log`: text, as the kubelet answers.
fn pod_log(state: &State, target: &Target, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let pod = state.api.get(&target.rt, &target.namespace, &target.name)?;
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    let container = match query.get("container") {
        Some(c) if containers.contains(&c.as_str()) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!("container {c} is not valid for pod {}", target.name)));
        }
        None if containers.len() == 1 => containers[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                target.name,
                containers.join(" ")
            )));
        }
    };
    let int = |k: &str| -> Result<Option<i64>, ApiError> {
        query
            .get(k)
            .map(|v| v.parse::<i64>().map_err(|_| ApiError::bad_request(format!("{k}: {v:?} is not an integer"))))
            .transpose()
    };
    let q = super::logs::LogQuery {
        since_seconds: int("sinceSeconds")?,
        tail_lines: int("tailLines")?,
        limit_bytes: int("limitBytes")?,
        timestamps: matches!(query.get("timestamps").map(String::as_str), Some("true" | "1")),
    };
    let text = state.api.logs.read(&target.namespace, &target.name, &container, &q, jiff::Timestamp::now());
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

fn error(e: &ApiError) -> Response {
    let mut resp = respond(e.code, &e.to_status());
    if e.code == 401 {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Entry point for every request.
pub async fn handle(
    state: axum::extract::State<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let state = state.0;
    let result = serve(&state, &method, &uri, &headers, body).await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => error(&e),
    };
    tracing::debug!(%method, path = uri.path(), status = resp.status().as_u16(), "sandbox request");
    resp
}

async fn serve(
    state: &Arc<State>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let query: Query = axum::extract::Query::<Query>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let caller = state.rbac.authenticate(bearer(headers)).map_err(|_| ApiError::unauthorized())?;
    if bearer(headers).is_some_and(|t| !minted_owner_exists(state, t)) {
        return Err(ApiError::unauthorized());
    }
    let user = impersonated(state, &caller, headers)?;
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Non-resource endpoints.
    let non_resource = matches!(
        segs.as_slice(),
        ["version" | "api" | "apis" | "healthz" | "livez" | "readyz"]
            | ["api", "v1"]
            | ["apis", _]
            | ["apis", _, _]
            | ["openapi", ..]
    );
    if non_resource {
        let attrs = Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            path: Some(path.to_owned()),
            ..Attributes::default()
        };
        if !state.rbac.authorize(&user, &attrs).allowed {
            return Err(ApiError::forbidden(forbidden_message(&user.username, &attrs)));
        }
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )));
        }
        let registry = state.api.store.registry();
        let doc = match segs.as_slice() {
            ["version"] => Some(version()),
            ["api"] => Some(registry.core_versions(&state.addr)),
            ["apis"] => Some(registry.group_list()),
            ["api", "v1"] => registry.resource_list("", "v1"),
            ["apis", g] => registry.group(g),
            ["apis", g, v] => registry.resource_list(g, v),
            ["openapi", "v3"] => Some(registry.openapi_root()),
            ["openapi", "v3", "api", v] => registry.openapi_group_version("", v),
            ["openapi", "v3", "apis", g, v] => registry.openapi_group_version(g, v),
            ["healthz"] | ["livez"] | ["readyz"] => return Ok((StatusCode::OK, "ok").into_response()),
            _ => None,
        };
        return doc.map(|d| respond(200, &d)).ok_or_else(ApiError::not_found_path);
    }
    let target = parse_target(state, &segs)?;
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), target.name.is_empty()) {
        ("GET", false) => "get",
        ("GET", true) if watch => "watch",
        ("GET", true) => "list",
        ("POST", true) => "create",
        ("POST", false) if target.subresource == "token" => "create",
        ("PUT", false) => "update",
        ("PATCH", false) => "patch",
        ("DELETE", false) => "delete",
        ("DELETE", true) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )));
        }
    };
    if !target.subresource.is_empty() && !matches!(verb, "get" | "update" | "patch") && target.subresource != "token" {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} on {})",
            target.subresource
        )));
    }
    if target.rt.is_review() && verb != "create" {
        return Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource".to_owned(),
        ));
    }
    let attrs = Attributes {
        verb: verb.into(),
        group: target.rt.group.clone(),
        resource: target.rt.plural.clone(),
        subresource: target.subresource.clone(),
        // A Namespace is authorized in its own namespace, as kube-apiserver does.
        namespace: if target.rt.behaviour == Behaviour::Namespace {
            target.name.clone()
        } else {
            target.namespace.clone()
        },
        name: target.name.clone(),
        path: None,
    };
    if !state.rbac.authorize(&user, &attrs).allowed {
        return Err(ApiError::forbidden(forbidden_message(&user.username, &attrs)));
    }
    let table_wanted = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.split(',').any(|t| t.contains("as=Table") && t.contains("g=meta.k8s.io")));
    check_accept(headers)?;
    if target.subresource == "token" {
        if verb != "create" {
            return Err(ApiError::method_not_allowed(format!(
                "{method} on serviceaccounts/token is not allowed: POST it"
            )));
        }
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::too_large())?;
        return token_request(state, &target, &bytes);
    }
    if target.subresource == "log" {
        if verb != "get" {
            return Err(ApiError::method_not_allowed(format!("{method} on pods/log is not allowed")));
        }
        return pod_log(state, &target, &query);
    }
    if target.subresource == "scale" {
        let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::too_large())?;
        return scale(state, &user, target, verb, &query, headers, &bytes).await;
    }
    let part = if target.subresource == "status" { Part::Status } else { Part::Main };
    let rt = target.rt.clone();
    match verb {
        "get" => {
            let obj = state.api.get(&rt, &target.namespace, &target.name)?;
            if table_wanted {
                let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
                return Ok(respond(200, &table(&rt, &[obj], meta, include(&query))));
            }
            Ok(respond(200, &obj))
        }
        "list" => {
            let opts = list_options(&rt, &query, false)?;
            let ns = rt.namespaced.then_some(target.namespace.as_str()).filter(|n| !n.is_empty());
            let list = state.api.list(&rt, ns, &opts)?;
            if table_wanted {
                let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                return Ok(respond(200, &table(&rt, &items, list["metadata"].clone(), include(&query))));
            }
            Ok(respond(200, &list))
        }
        "watch" => watch_stream(state.clone(), target, &query, table_wanted),
        _ => {
            let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ApiError::too_large())?;
            write(state, &user, target, verb, part, &query, headers, &bytes).await
        }
    }
}

/// Kinds with a `scale` subresource (`autoscaling/v1` Scale): what `kubectl scale` and an
/// HPA write.
pub fn scalable(rt: &ResourceType) -> bool {
    rt.group == "apps" && matches!(rt.plural.as_str(), "deployments" | "statefulsets" | "replicasets")
}

/// The Scale of a scalable object: its replicas wanted and running, and its selector.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp")},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// `GET`, `PUT` or `PATCH` of a workload's `scale` subresource: a write becomes a merge patch
/// of the workload's `spec.replicas` (as the workload's own writer), answered with the new
/// Scale.
#[allow(clippy::too_many_arguments)]
async fn scale(
    state: &Arc<State>,
    user: &UserInfo,
    target: Target,
    verb: &str,
    q: &Query,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let current = scale_of(&state.api.get(&target.rt, &target.namespace, &target.name)?);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let wanted = match verb {
        "get" => return Ok(respond(200, &current)),
        "update" => {
            let body = if media == super::protobuf::MEDIA_TYPE {
                super::protobuf::decode(bytes)
                    .map_err(|e| ApiError::bad_request(format!("error decoding the protobuf body: {e}")))?
            } else {
                parse_body(bytes, &media)?
            };
            if body.get("kind").and_then(Value::as_str) != Some("Scale") {
                return Err(ApiError::bad_request("the body of a scale update must be a Scale"));
            }
            body
        }
        "patch" => {
            let patch = parse_body(bytes, "json")?;
            let mut doc = current.clone();
            match media.as_str() {
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = serde_json::from_value(patch)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut doc, &ops)
                        .map_err(|e| ApiError::bad_request(format!("the JSON patch does not apply: {e}")))?;
                }
                // A Scale has no lists: a strategic merge is a merge.
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    json_patch::merge(&mut doc, &patch)
                }
                other => {
                    return Err(ApiError::unsupported_media_type(format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other})"
                    )));
                }
            }
            doc
        }
        other => {
            return Err(ApiError::method_not_allowed(format!("{other} on {}/scale is not allowed", target.rt.plural)));
        }
    };
    let replicas = wanted.pointer("/spec/replicas").and_then(Value::as_i64).filter(|r| *r >= 0).ok_or_else(|| {
        ApiError::invalid(
            "Scale.autoscaling",
            &target.name,
            vec![super::status::Cause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: must be greater than or equal to 0".into(),
                field: "spec.replicas".into(),
            }],
        )
    })?;
    let mut merge = HeaderMap::new();
    merge.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/merge-patch+json"));
    if let Some(agent) = headers.get(header::USER_AGENT) {
        merge.insert(header::USER_AGENT, agent.clone());
    }
    // A Scale's resourceVersion is its workload's: it goes with the patch as its precondition
    // (a stale one is a 409, as for any write).
    let mut patch = json!({"spec": {"replicas": replicas}});
    if let Some(rv) = wanted.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    let body = Bytes::from(patch.to_string());
    let parent = Target { subresource: String::new(), ..target };
    let (rt, namespace, name) = (parent.rt.clone(), parent.namespace.clone(), parent.name.clone());
    write(state, user, parent, "patch", Part::Main, q, &merge, &body).await?;
    Ok(respond(200, &scale_of(&state.api.get(&rt, &namespace, &name)?)))
}

fn include(q: &Query) -> &str {
    q.get("includeObject").map_or("Metadata", String::as_str)
}

fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else { return Ok(()) };
    let ok = accept.split(',').any(|t| {
        let mt = t.split(';').next().unwrap_or_default().trim();
        matches!(mt, "application/json" | "application/yaml" | "*/*" | "application/*" | "application/json-seq" | "")
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/yaml (asked for {accept})"
        )))
    }
}

/// A minted token is good only while its ServiceAccount exists (kube-apiserver checks the
/// bound object on every use); any other token passes this check.
fn minted_owner_exists(state: &State, token: &str) -> bool {
    let Some((namespace, name)) = state.rbac.minted.owner(token) else { return true };
    let registry = state.api.store.registry();
    registry.find("", "v1", "serviceaccounts").is_some_and(|rt| state.api.get(&rt, &namespace, &name).is_ok())
}

/// `POST .../serviceaccounts/NAME/token`: a token for an existing ServiceAccount, for the
/// audiences asked (default: the API server's), good for `expirationSeconds` (at least 600,
/// default 3600), as kube-apiserver mints them.
fn token_request(state: &State, target: &Target, body: &[u8]) -> Result<Response, ApiError> {
    state.api.get(&target.rt, &target.namespace, &target.name)?;
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the TokenRequest does not parse: {e}")))?;
    let audiences: Vec<String> = request
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let seconds = request.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    if seconds < 600 {
        return Err(ApiError::bad_request("spec.expirationSeconds: may not specify a duration less than 10 minutes"));
    }
    let (token, expires) = state.rbac.minted.mint(&target.namespace, &target.name, audiences.clone(), seconds);
    let shown = if audiences.is_empty() { vec![crate::sandbox::rbac::API_AUDIENCE.to_owned()] } else { audiences };
    Ok(respond(
        201,
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": target.name, "namespace": target.namespace, "creationTimestamp": jiff::Timestamp::now().to_string()},
            "spec": {"audiences": shown, "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": expires.to_string()}}),
    ))
}

fn impersonated(state: &State, caller: &UserInfo, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let text = |v: &axum::http::HeaderValue| v.to_str().ok().map(str::to_owned);
    let mut asked = crate::sandbox::rbac::Impersonation {
        user: headers.get("impersonate-user").and_then(text),
        groups: headers.get_all("impersonate-group").iter().filter_map(text).collect(),
        uid: headers.get("impersonate-uid").and_then(text),
        extra: Default::default(),
    };
    // `Impersonate-Extra-<key>`: the key percent-encoded (it may hold `/`), one header per value.
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-")
            && let Some(value) = text(value)
        {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
            asked.extra.entry(key).or_default().push(value);
        }
    }
    state.rbac.impersonate(caller, &asked).map_err(|d| ApiError::forbidden(d.0))
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-reflex-sandbox",
        "gitCommit": "sandbox",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a (Reflex sandbox: an in-memory stand-in for kube-apiserver)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

fn parse_target(state: &State, segs: &[&str]) -> Result<Target, ApiError> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    let registry = state.api.store.registry();
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, tail @ ..] if !(group.is_empty() && *r == "status" && tail.is_empty()) => {
            (*ns, std::iter::once(*r).chain(tail.iter().copied()).collect::<Vec<_>>())
        }
        other => ("", other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, "", ""),
        [p, n] => (*p, *n, ""),
        [p, n, s] => (*p, *n, *s),
        _ => return Err(ApiError::not_found_path()),
    };
    let rt = registry.find(group, version, plural).ok_or_else(ApiError::not_found_path)?;
    let pod_log = sub == "log" && group.is_empty() && rt.plural == "pods";
    let scales = sub == "scale" && scalable(&rt);
    let token_request = sub == "token" && group.is_empty() && rt.plural == "serviceaccounts";
    if !(sub.is_empty() || sub == "status" && rt.status || pod_log || token_request || scales) {
        return Err(ApiError::not_found_path());
    }
    if !rt.namespaced && !namespace.is_empty() {
        return Err(ApiError::not_found_path());
    }
    Ok(Target { rt, namespace: namespace.to_owned(), name: name.to_owned(), subresource: sub.to_owned() })
}

fn list_options(rt: &ResourceType, q: &Query, watch: bool) -> Result<ListOptions, ApiError> {
    let labels =
        LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str)).map_err(ApiError::bad_request)?;
    let fields =
        FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str)).map_err(ApiError::bad_request)?;
    if let Some(bad) = fields.paths().find(|p| !rt.supports_field(p)) {
        return Err(ApiError::bad_request(format!("field label not supported: {bad}")));
    }
    let limit = match q.get("limit") {
        Some(l) => {
            Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("limit: {l:?} is not a number")))?)
        }
        None => None,
    };
    let exact = match (q.get("resourceVersion"), q.get("resourceVersionMatch").map(String::as_str)) {
        (Some(rv), Some("Exact")) => Some(parse_rv(rv)?),
        (None, Some(m)) if !m.is_empty() && !watch => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        _ => None,
    };
    Ok(ListOptions { labels, fields, limit, continue_token: q.get("continue").cloned(), exact })
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}: must be a number")))
}

fn parse_body(bytes: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    let value: Value = if content_type.contains("yaml") {
        let text = std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
        serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the server rejected our request due to an error in our request: couldn't get version/kind; json parse error: {e}")))?
    };
    Ok(value)
}

#[allow(clippy::too_many_arguments)]
async fn write(
    state: &Arc<State>,
    user: &UserInfo,
    target: Target,
    verb: &str,
    part: Part,
    q: &Query,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let validation =
        FieldValidation::parse(q.get("fieldValidation").map(String::as_str)).map_err(ApiError::bad_request)?;
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        if verb == "patch" && media == "application/apply-patch+yaml" {
            String::new()
        } else {
            headers
                .get(header::USER_AGENT)
                .and_then(|u| u.to_str().ok())
                .and_then(|u| u.split('/').next())
                .unwrap_or("unknown")
                .to_owned()
        }
    });
    super::api::validate_manager(&manager)?;
    let w = WriteCtx {
        rt: target.rt.clone(),
        namespace: target.namespace.clone(),
        manager,
        dry_run,
        validation,
        user: Some(user.clone()),
    };
    let ok = |code: u16, out: Outcome| with_warnings(respond(code, &out.object), &out.warnings);
    match verb {
        "create" | "update" => {
            let body = if media == super::protobuf::MEDIA_TYPE {
                // kubectl sends built-in kinds as protobuf; custom resources are JSON only.
                super::protobuf::decode(bytes).map_err(|e| {
                    if e.contains("no protobuf form") {
                        ApiError::unsupported_media_type(format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({e})"
                        ))
                    } else {
                        ApiError::bad_request(format!("error decoding the protobuf body: {e}"))
                    }
                })?
            } else if matches!(media.as_str(), "application/json" | "application/yaml" | "") {
                parse_body(bytes, &media)?
            } else {
                return Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {media})"
                )));
            };
            if !body.is_object() {
                return Err(ApiError::bad_request("the request body must be a JSON object"));
            }
            if verb == "create" {
                if target.rt.is_review() {
                    return review(state, user, &target, body);
                }
                check_kind(&target.rt, &body)?;
                Ok(ok(201, state.api.create(&w, body)?))
            } else {
                check_kind(&target.rt, &body)?;
                Ok(ok(200, state.api.update(&w, &target.name, body, part)?))
            }
        }
        "patch" => {
            let kind = match media.as_str() {
                "application/json-patch+json" => PatchKind::Json,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" => {
                    PatchKind::Apply { force: q.get("force").is_some_and(|f| f == "true") }
                }
                _ => {
                    return Err(ApiError::unsupported_media_type(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
                    ));
                }
            };
            if q.contains_key("force") && !matches!(kind, PatchKind::Apply { .. }) {
                return Err(ApiError::invalid(
                    "PatchOptions.meta.k8s.io",
                    "",
                    vec![super::status::Cause {
                        reason: "FieldValueForbidden".into(),
                        message: "Forbidden: may not be specified for non-apply patch".into(),
                        field: "force".into(),
                    }],
                ));
            }
            let body = parse_body(bytes, if matches!(kind, PatchKind::Apply { .. }) { "yaml" } else { "json" })?;
            let (out, created) = state.api.patch(&w, &target.name, kind, &body, part)?;
            Ok(ok(if created { 201 } else { 200 }, out))
        }
        "delete" | "deletecollection" => {
            let body = if bytes.is_empty() { json!({}) } else { parse_body(bytes, "json")? };
            let policy = q
                .get("propagationPolicy")
                .cloned()
                .or_else(|| body.get("propagationPolicy").and_then(Value::as_str).map(str::to_owned));
            let orphan = policy.as_deref() == Some("Orphan") || body.get("orphanDependents") == Some(&json!(true));
            if let Some(p) = &policy
                && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
            {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
            let dry =
                dry_run || body.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "All"));
            let w = WriteCtx { dry_run: dry, ..w };
            if verb == "deletecollection" {
                let opts = list_options(&target.rt, q, false)?;
                return Ok(respond(200, &state.api.delete_collection(&w, &opts)?));
            }
            let opts = DeleteOptions {
                uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
                resource_version: body
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                orphan,
            };
            Ok(respond(200, &state.api.delete(&w, &target.name, &opts)?))
        }
        _ => Err(ApiError::method_not_allowed("unsupported verb")),
    }
}

fn check_kind(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if (!kind.is_empty() && kind != rt.kind) || (!api_version.is_empty() && api_version != rt.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({}) or kind {kind:?} is not {:?}",
            rt.api_version(),
            rt.kind
        )));
    }
    Ok(())
}
