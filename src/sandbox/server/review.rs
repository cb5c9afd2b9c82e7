//! The review APIs: SubjectAccessReview, SelfSubjectAccessReview and the rules review,
//! answered from the RBAC table.

use super::*;

/// SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectAccessReview, TokenReview,
/// SelfSubjectReview: answered from the RBAC table, never stored.
pub(super) fn review(state: &State, user: &UserInfo, target: &Target, mut body: Value) -> Result<Response, ApiError> {
    let rt = &target.rt;
    let s = |p: &str| body.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    let attributes = |body: &Value| -> Attributes {
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        match body.pointer("/spec/nonResourceAttributes") {
            Some(_) => Attributes {
                verb: s("/spec/nonResourceAttributes/verb"),
                path: Some(s("/spec/nonResourceAttributes/path")),
                ..Attributes::default()
            },
            None => Attributes {
                verb: s("/spec/resourceAttributes/verb"),
                group: s("/spec/resourceAttributes/group"),
                resource: s("/spec/resourceAttributes/resource"),
                subresource: s("/spec/resourceAttributes/subresource"),
                namespace: s("/spec/resourceAttributes/namespace"),
                name: s("/spec/resourceAttributes/name"),
                path: None,
            },
        }
    };
    let status = match rt.behaviour {
        Behaviour::TokenReview => {
            let token = s("/spec/token");
            let audiences: Vec<String> = body
                .pointer("/spec/audiences")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            match state.rbac.review(&token, &audiences) {
                Ok(_) if !minted_owner_exists(state, &token) => {
                    json!({"authenticated": false, "error": "the token's ServiceAccount no longer exists"})
                }
                Ok((u, shared)) if !token.is_empty() => {
                    let mut user = json!({"username": u.username, "uid": u.uid, "groups": u.groups});
                    if !u.extra.is_empty() {
                        user["extra"] = json!(u.extra);
                    }
                    json!({"authenticated": true, "user": user, "audiences": shared})
                }
                Ok(_) => json!({"authenticated": false, "error": "invalid bearer token"}),
                Err(error) => json!({"authenticated": false, "error": error}),
            }
        }
        Behaviour::SelfSubjectReview => {
            json!({"userInfo": {"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra}})
        }
        Behaviour::SelfSubjectAccessReview => decision(state, user, &attributes(&body)),
        Behaviour::SubjectAccessReview | Behaviour::LocalSubjectAccessReview => {
            let subject = UserInfo {
                username: s("/spec/user"),
                uid: s("/spec/uid"),
                groups: body
                    .pointer("/spec/groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect(),
                extra: body
                    .pointer("/spec/extra")
                    .and_then(|e| serde_json::from_value(e.clone()).ok())
                    .unwrap_or_default(),
            };
            if subject.username.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::invalid(
                    &format!("{}.{}", rt.kind, rt.group),
                    "",
                    vec![crate::sandbox::status::Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: at least one of user or group must be specified".into(),
                        field: "spec.user".into(),
                    }],
                ));
            }
            let mut a = attributes(&body);
            if rt.behaviour == Behaviour::LocalSubjectAccessReview {
                if !a.namespace.is_empty() && a.namespace != target.namespace {
                    return Err(ApiError::bad_request(
                        "spec.resourceAttributes.namespace must match metadata.namespace",
                    ));
                }
                a.namespace = target.namespace.clone();
            }
            decision(state, &subject, &a)
        }
        _ => return Err(ApiError::method_not_allowed("not a review type")),
    };
    body["status"] = status;
    body["apiVersion"] = json!(rt.api_version());
    body["kind"] = json!(rt.kind);
    Ok(respond(201, &body))
}

pub(super) fn decision(state: &State, user: &UserInfo, a: &Attributes) -> Value {
    let d = state.rbac.authorize(user, a);
    if d.allowed { json!({"allowed": true, "reason": d.reason}) } else { json!({"allowed": false}) }
}
