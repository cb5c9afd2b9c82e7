//! Kubernetes `Status` errors, shaped as a real API server shapes them.
//!
//! Contract: every failure the sandbox answers with is an [`ApiError`]; its JSON body is a
//! `meta/v1 Status` with the same `code`, `reason`, `message` wording and `details` that
//! kube-apiserver uses, so client code that branches on them behaves the same here.

use serde_json::{Value, json};

/// One field-level cause of an error (`details.causes[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// The resource an error is about (`details.{group,kind,name}`), kind being the plural
/// resource name as the API server writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    pub group: String,
    pub resource: String,
    pub name: String,
}

impl Subject {
    pub fn new(group: &str, resource: &str, name: &str) -> Self {
        Self { group: group.to_owned(), resource: resource.to_owned(), name: name.to_owned() }
    }

    /// `deployments.apps "web"` / `pods "web-1"`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            format!("{} {:?}", self.resource, self.name)
        } else {
            format!("{}.{} {:?}", self.resource, self.group, self.name)
        }
    }
}

/// An API error: HTTP code, machine reason, human message and optional details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub subject: Option<Box<Subject>>,
    pub causes: Vec<Cause>,
    pub retry_after_seconds: Option<u32>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), subject: None, causes: Vec::new(), retry_after_seconds: None }
    }

    fn about(mut self, subject: Subject) -> Self {
        self.subject = Some(Box::new(subject));
        self
    }

    pub fn not_found(s: Subject) -> Self {
        Self::new(404, "NotFound", format!("{} not found", s.qualified())).about(s)
    }

    pub fn already_exists(s: Subject) -> Self {
        Self::new(409, "AlreadyExists", format!("{} already exists", s.qualified())).about(s)
    }

    /// A stale resourceVersion or failed precondition.
    pub fn conflict(s: Subject, why: &str) -> Self {
        Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {}: {why}", s.qualified())).about(s)
    }

    pub fn modified(s: Subject) -> Self {
        Self::conflict(s, "the object has been modified; please apply your changes to the latest version and try again")
    }

    /// Server-side apply conflicts: one cause per contested field.
    pub fn apply_conflicts(s: Subject, conflicts: Vec<Cause>) -> Self {
        let n = conflicts.len();
        let list = conflicts.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("\n- ");
        let message = if n == 1 {
            format!("Apply failed with 1 conflict: {list}")
        } else {
            format!("Apply failed with {n} conflicts: {list}")
        };
        let mut e = Self::new(409, "Conflict", message).about(s);
        e.causes = conflicts;
        e
    }

    /// `410 Gone` / `Expired`: the requested resourceVersion has been compacted away.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// `422 Invalid`: the object failed validation; one cause per field.
    pub fn invalid(kind_group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>();
        let message = if list.len() == 1 {
            format!("{kind_group} {name:?} is invalid: {}", list[0])
        } else {
            format!("{kind_group} {name:?} is invalid: [{}]", list.join(", "))
        };
        let mut e = Self::new(422, "Invalid", message);
        e.subject =
            Some(Box::new(Subject { group: String::new(), resource: kind_group.to_owned(), name: name.to_owned() }));
        e.causes = causes;
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    pub fn too_large() -> Self {
        Self::new(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub fn not_found_path() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }

    /// The `meta/v1 Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some(s) = &self.subject {
            if !s.name.is_empty() {
                details.insert("name".into(), json!(s.name));
            }
            if !s.group.is_empty() {
                details.insert("group".into(), json!(s.group));
            }
            details.insert("kind".into(), json!(s.resource));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(secs) = self.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(secs));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// The `Status` a delete answers with when the object is gone at once.
pub fn success(s: &Subject, uid: &str) -> Value {
    let mut details = json!({"name": s.name, "kind": s.resource, "uid": uid});
    if !s.group.is_empty() {
        details["group"] = json!(s.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_the_api_server() {
        let e = ApiError::not_found(Subject::new("apps", "deployments", "web"));
        let s = e.to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["group"], "apps");
        let core = ApiError::not_found(Subject::new("", "pods", "p")).to_status();
        assert_eq!(core["message"], "pods \"p\" not found");
        assert!(core["details"].get("group").is_none());
    }

    #[test]
    fn conflict_wording_matches_client_expectations() {
        let e = ApiError::modified(Subject::new("reflex.dev", "remediations", "r"));
        assert_eq!(e.code, 409);
        assert!(e.message.starts_with("Operation cannot be fulfilled on remediations.reflex.dev \"r\": the object"));
    }
}
