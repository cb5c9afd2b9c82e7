//! Authentication and authorization from a declared RBAC table.
//!
//! Contract: the table (YAML, see [`Table`]) declares users and service accounts with their
//! bearer tokens, and grants: subjects (User, Group, ServiceAccount) bound to RBAC
//! `PolicyRule`s, cluster-wide or in listed namespaces. [`Table::authenticate`] maps a token to
//! a user (none → `system:anonymous`, unknown → 401); [`Table::impersonate`] applies
//! `Impersonate-User`/`Impersonate-Group` only when the caller holds the `impersonate` verb;
//! [`Table::authorize`] answers like the RBAC authorizer, with the same forbidden wording. The
//! `system:masters` group is a superuser, and discovery plus self-reviews are open to everyone,
//! as in a default cluster. Pure: no I/O.

use std::collections::BTreeSet;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub token: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Who the token is for; empty: the API server ([`API_AUDIENCE`]).
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// The API server's own audience: a token without this one cannot call it.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub token: String,
    /// Who the token is for (a TokenRequest's audiences); empty: the API server.
    #[serde(default)]
    pub audiences: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub kind: SubjectKind,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

/// An RBAC `PolicyRule`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resource_names: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// Subjects bound to rules; `namespaces` empty means cluster-wide (a ClusterRoleBinding),
/// otherwise like a RoleBinding in each listed namespace.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub subjects: Vec<Subject>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Table {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Tokens minted by TokenRequests while the sandbox runs.
    #[serde(skip)]
    pub minted: Minted,
}

/// A token a TokenRequest minted: for whom, for which audiences, until when.
#[derive(Clone, Debug)]
pub struct MintedToken {
    pub namespace: String,
    pub name: String,
    pub audiences: Vec<String>,
    pub expires: jiff::Timestamp,
}

/// The tokens minted so far (shared by every clone of the table).
#[derive(Clone, Debug, Default)]
pub struct Minted(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, MintedToken>>>);

impl PartialEq for Minted {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Minted {}

impl Minted {
    /// Records a new token for `namespace/name`, for `audiences` (none: the API server's),
    /// good for `seconds`; returns it and its expiry.
    pub fn mint(&self, namespace: &str, name: &str, audiences: Vec<String>, seconds: i64) -> (String, jiff::Timestamp) {
        let token = format!("sbx-minted-{}", uuid::Uuid::new_v4().simple());
        let expires = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(jiff::Timestamp::MAX);
        let entry = MintedToken { namespace: namespace.to_owned(), name: name.to_owned(), audiences, expires };
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(token.clone(), entry);
        (token, expires)
    }

    /// The ServiceAccount a minted, unexpired token is for.
    pub fn owner(&self, token: &str) -> Option<(String, String)> {
        self.get(token).map(|m| (m.namespace, m.name))
    }

    fn get(&self, token: &str) -> Option<MintedToken> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(token).filter(|m| m.expires > jiff::Timestamp::now()).cloned()
    }
}

/// An authenticated identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> Self {
        Self {
            username: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: Default::default(),
        }
    }

    fn service_account(ns: &str, name: &str) -> Self {
        Self {
            username: format!("system:serviceaccount:{ns}:{name}"),
            uid: format!("sa-{ns}-{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            extra: Default::default(),
        }
    }

    fn sa_parts(&self) -> Option<(&str, &str)> {
        self.username.strip_prefix("system:serviceaccount:")?.split_once(':')
    }
}

/// What a request wants to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Set for non-resource requests (`/api`, `/version`, ...).
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// A token the table does not know (401).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownToken;

/// Why impersonation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied(pub String);

fn matches(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn path_matches(list: &[String], path: &str) -> bool {
    list.iter().any(|x| x == "*" || x == path || x.strip_suffix('*').is_some_and(|p| path.starts_with(p)))
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        if !matches(&self.verbs, &a.verb) {
            return false;
        }
        if let Some(path) = &a.path {
            return path_matches(&self.non_resource_urls, path);
        }
        let full =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == full
                || (!a.subresource.is_empty()
                    && (*r == format!("*/{}", a.subresource) || *r == format!("{}/*", a.resource)))
        });
        matches(&self.api_groups, &a.group)
            && resource_ok
            && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }
}

/// Paths everyone may read (system:discovery, system:public-info-viewer).
const OPEN_PATHS: &[&str] =
    &["/api", "/api/*", "/apis", "/apis/*", "/version", "/version/", "/healthz", "/livez", "/readyz", "/openapi/*"];

impl Table {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let table: Table = serde_saphyr::from_str(text).map_err(|e| format!("RBAC table: {e}"))?;
        let mut tokens = BTreeSet::new();
        let all_tokens = table.users.iter().map(|u| &u.token).chain(table.service_accounts.iter().map(|s| &s.token));
        for t in all_tokens {
            if t.is_empty() {
                return Err("RBAC table: a token may not be empty".into());
            }
            if !tokens.insert(t) {
                return Err(format!("RBAC table: token {t:?} is declared twice; each identity needs its own"));
            }
        }
        for g in &table.grants {
            for s in &g.subjects {
                if s.kind == SubjectKind::ServiceAccount && s.namespace.is_none() {
                    return Err(format!("RBAC table: ServiceAccount subject {:?} needs a namespace", s.name));
                }
            }
        }
        Ok(table)
    }

    /// The identity behind a bearer token. `None` (no token) is anonymous; an unknown token
    /// is `Err` (401).
    pub fn authenticate(&self, token: Option<&str>) -> Result<UserInfo, UnknownToken> {
        let Some(token) = token else { return Ok(UserInfo::anonymous()) };
        // A token minted for another audience does not authenticate to the API server.
        self.review(token, &[]).map(|(user, _)| user).map_err(|_| UnknownToken)
    }

    /// A TokenReview of `token` for `audiences` (none: the API server's), as kube-apiserver
    /// answers it: the identity — a ServiceAccount's with the `credential-id` extra of its
    /// token — and the audiences both the token and the review name; an error when they
    /// share none or the token is unknown.
    pub fn review(&self, token: &str, audiences: &[String]) -> Result<(UserInfo, Vec<String>), String> {
        let wanted: Vec<String> = if audiences.is_empty() { vec![API_AUDIENCE.to_owned()] } else { audiences.to_vec() };
        let (user, minted) = if let Some(u) = self.users.iter().find(|u| u.token == token) {
            let mut groups = u.groups.clone();
            groups.push("system:authenticated".into());
            let user = UserInfo {
                username: u.name.clone(),
                uid: format!("user-{}", u.name),
                groups,
                extra: Default::default(),
            };
            (user, &u.audiences)
        } else if let Some(m) = self.minted.get(token) {
            let mut user = UserInfo::service_account(&m.namespace, &m.name);
            let digest: String = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={digest}")]);
            return shared_audiences(&wanted, &m.audiences).map(|shared| (user, shared));
        } else if let Some(sa) = self.service_accounts.iter().find(|s| s.token == token) {
            let mut user = UserInfo::service_account(&sa.namespace, &sa.name);
            let digest: String = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={digest}")]);
            (user, &sa.audiences)
        } else {
            return Err("invalid bearer token".into());
        };
        shared_audiences(&wanted, minted).map(|shared| (user, shared))
    }

    fn subject_matches(s: &Subject, u: &UserInfo) -> bool {
        match s.kind {
            SubjectKind::User => s.name == u.username,
            SubjectKind::Group => u.groups.contains(&s.name),
            SubjectKind::ServiceAccount => {
                u.sa_parts() == Some((s.namespace.as_deref().unwrap_or_default(), s.name.as_str()))
            }
        }
    }

    /// May `user` do `a`?
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Decision { allowed: true, reason: "superuser (system:masters)".into() };
        }
        if let Some(path) = &a.path
            && a.verb == "get"
            && path_matches(&OPEN_PATHS.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), path)
        {
            return Decision { allowed: true, reason: "discovery is public".into() };
        }
        let self_review = a.verb == "create"
            && ((a.group == "authorization.k8s.io"
                && matches!(a.resource.as_str(), "selfsubjectaccessreviews" | "selfsubjectrulesreviews"))
                || (a.group == "authentication.k8s.io" && a.resource == "selfsubjectreviews"));
        if self_review && user.groups.iter().any(|g| g == "system:authenticated") {
            return Decision { allowed: true, reason: "self reviews are open to authenticated users".into() };
        }
        for (i, g) in self.grants.iter().enumerate() {
            if !g.subjects.iter().any(|s| Self::subject_matches(s, user)) {
                continue;
            }
            let scoped_ok = g.namespaces.is_empty() || (a.path.is_none() && g.namespaces.contains(&a.namespace));
            if scoped_ok && g.rules.iter().any(|r| r.allows(a)) {
                return Decision { allowed: true, reason: format!("allowed by grant #{i} of the RBAC table") };
            }
        }
        Decision { allowed: false, reason: String::new() }
    }

    /// Apply impersonation headers on behalf of `caller`, as kube-apiserver does: the user
    /// (or ServiceAccount), each group, the uid and each extra value need the `impersonate`
    /// verb on `users`/`serviceaccounts`, `groups`, `uids` and `userextras/<key>`
    /// (authentication.k8s.io) respectively; groups, a uid or extras without a user are refused.
    pub fn impersonate(&self, caller: &UserInfo, asked: &Impersonation) -> Result<UserInfo, Denied> {
        let Impersonation { user, groups, uid, extra } = asked;
        let Some(target) = user.as_deref() else {
            if groups.is_empty() && uid.is_none() && extra.is_empty() {
                return Ok(caller.clone());
            }
            return Err(Denied(
                "requested impersonation of groups, a uid or extra without impersonating a user".into(),
            ));
        };
        let check_in = |group: &str, resource: &str, subresource: &str, namespace: &str, name: &str| {
            let a = Attributes {
                verb: "impersonate".into(),
                group: group.into(),
                resource: resource.into(),
                subresource: subresource.into(),
                namespace: namespace.into(),
                name: name.into(),
                ..Attributes::default()
            };
            if self.authorize(caller, &a).allowed {
                Ok(())
            } else {
                Err(Denied(forbidden_message(&caller.username, &a)))
            }
        };
        let check = |resource: &str, namespace: &str, name: &str| check_in("", resource, "", namespace, name);
        let mut out =
            if let Some((ns, name)) = target.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
                check("serviceaccounts", ns, name)?;
                UserInfo::service_account(ns, name)
            } else {
                check("users", "", target)?;
                UserInfo { username: target.to_owned(), uid: String::new(), groups: vec![], extra: Default::default() }
            };
        for g in groups {
            check("groups", "", g)?;
            if !out.groups.contains(g) {
                out.groups.push(g.clone());
            }
        }
        if let Some(uid) = uid {
            check_in("authentication.k8s.io", "uids", "", "", uid)?;
            out.uid = uid.clone();
        }
        for (key, values) in extra {
            for value in values {
                check_in("authentication.k8s.io", "userextras", key, "", value)?;
            }
        }
        out.extra = extra.clone();
        if !out.groups.iter().any(|g| g == "system:authenticated") && target != "system:anonymous" {
            out.groups.push("system:authenticated".into());
        }
        Ok(out)
    }
}

/// The audiences both a review wants and a token was minted for (none minted: the API
/// server's); an error naming both when they share none.
fn shared_audiences(wanted: &[String], minted: &[String]) -> Result<Vec<String>, String> {
    let minted: Vec<String> = if minted.is_empty() { vec![API_AUDIENCE.to_owned()] } else { minted.to_vec() };
    let shared: Vec<String> = wanted.iter().filter(|a| minted.contains(a)).cloned().collect();
    if shared.is_empty() {
        return Err(format!("token audiences {minted:?} is invalid for the target audiences {wanted:?}"));
    }
    Ok(shared)
}

/// What a request asks to be treated as (the `Impersonate-*` headers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Impersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// `configmaps "x" is forbidden: User "alice" cannot get resource "configmaps" in API group "" in the namespace "shop"`
pub fn forbidden_message(username: &str, a: &Attributes) -> String {
    if let Some(path) = &a.path {
        return format!("forbidden: User {username:?} cannot {} path {path:?}", a.verb);
    }
    let res = if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let what = match (a.group.is_empty(), a.name.is_empty()) {
        (true, true) => a.resource.clone(),
        (true, false) => format!("{} {:?}", a.resource, a.name),
        (false, true) => format!("{}.{}", a.resource, a.group),
        (false, false) => format!("{}.{} {:?}", a.resource, a.group, a.name),
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    format!(
        "{what} is forbidden: User {username:?} cannot {} resource {res:?} in API group {:?} {scope}",
        a.verb, a.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
users:
  - {name: admin, token: t-admin, groups: ["system:masters"]}
  - {name: alice, token: t-alice, groups: [oncall]}
  - {name: bob, token: t-bob}
serviceAccounts:
  - {namespace: reflex-system, name: reflex, token: t-reflex}
grants:
  - subjects: [{kind: Group, name: oncall}]
    namespaces: [shop]
    rules:
      - {apiGroups: ["apps"], resources: ["deployments", "deployments/status"], verbs: ["get", "list", "watch"]}
  - subjects: [{kind: ServiceAccount, namespace: reflex-system, name: reflex}]
    rules:
      - {apiGroups: [""], resources: ["users", "groups"], verbs: ["impersonate"]}
      - {apiGroups: ["reflex.dev"], resources: ["*"], verbs: ["*"]}
"#;

    fn attrs(verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn tokens_map_to_identities() {
        let t = Table::from_yaml(TABLE).unwrap();
        let sa = t.authenticate(Some("t-reflex")).unwrap();
        assert_eq!(sa.username, "system:serviceaccount:reflex-system:reflex");
        assert!(sa.groups.contains(&"system:serviceaccounts:reflex-system".to_owned()));
        assert!(t.authenticate(Some("nope")).is_err());
        assert_eq!(t.authenticate(None).unwrap().username, "system:anonymous");
    }

    #[test]
    fn grants_are_scoped() {
        let t = Table::from_yaml(TABLE).unwrap();
        let alice = t.authenticate(Some("t-alice")).unwrap();
        assert!(t.authorize(&alice, &attrs("list", "apps", "deployments", "shop")).allowed);
        assert!(!t.authorize(&alice, &attrs("list", "apps", "deployments", "other")).allowed);
        assert!(!t.authorize(&alice, &attrs("patch", "apps", "deployments", "shop")).allowed);
        let mut status = attrs("get", "apps", "deployments", "shop");
        status.subresource = "status".into();
        assert!(t.authorize(&alice, &status).allowed);
        let admin = t.authenticate(Some("t-admin")).unwrap();
        assert!(t.authorize(&admin, &attrs("delete", "", "secrets", "x")).allowed);
        let anon = UserInfo::anonymous();
        let disc = Attributes { verb: "get".into(), path: Some("/apis/apps/v1".into()), ..Attributes::default() };
        assert!(t.authorize(&anon, &disc).allowed);
        assert!(!t.authorize(&anon, &attrs("list", "", "pods", "default")).allowed);
    }

    #[test]
    fn impersonation_needs_the_verb() {
        let t = Table::from_yaml(TABLE).unwrap();
        let reflex = t.authenticate(Some("t-reflex")).unwrap();
        let asked = Impersonation { user: Some("alice".into()), groups: vec!["oncall".into()], ..Default::default() };
        let as_alice = t.impersonate(&reflex, &asked).unwrap();
        assert_eq!(as_alice.username, "alice");
        assert!(t.authorize(&as_alice, &attrs("get", "apps", "deployments", "shop")).allowed);
        let bob = t.authenticate(Some("t-bob")).unwrap();
        let err = t.impersonate(&bob, &Impersonation { user: Some("alice".into()), ..Default::default() }).unwrap_err();
        assert_eq!(
            err.0,
            "users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
    }

    #[test]
    fn forbidden_wording_matches_the_rbac_authorizer() {
        let mut a = attrs("get", "", "configmaps", "shop");
        a.name = "x".into();
        assert_eq!(
            forbidden_message("alice", &a),
            "configmaps \"x\" is forbidden: User \"alice\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"shop\""
        );
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert!(Table::from_yaml("users: [{name: a, token: x}, {name: b, token: x}]").unwrap_err().contains("twice"));
        assert!(Table::from_yaml("userz: []").is_err());
        assert!(Table::from_yaml("grants: [{subjects: [{kind: ServiceAccount, name: x}], rules: []}]").is_err());
    }
}
