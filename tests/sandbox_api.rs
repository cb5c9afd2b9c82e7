#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sandbox as kube::Client sees it over HTTPS: watch semantics (ordering, 410 after
//! compaction, bookmarks), optimistic concurrency, status subresource and generation,
//! finalizers, server-side apply conflicts, strategic merge, dry-run, pagination, RBAC with
//! impersonation and the review APIs, runtime CRDs with schema validation, the workload model,
//! and Status bodies for bad input.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use reflex::sandbox::{Config, Sandbox, rbac::Table};
use serde_json::{Value, json};

const RBAC: &str = r#"
users:
  - {name: admin, token: t-admin, groups: ["system:masters"]}
  - {name: operator, token: t-operator}
  - {name: alice, token: t-alice, groups: [oncall]}
  - {name: bob, token: t-bob}
grants:
  - subjects: [{kind: User, name: operator}]
    rules:
      - {apiGroups: [""], resources: ["users"], verbs: ["impersonate"], resourceNames: ["alice", "bob"]}
      - {apiGroups: [""], resources: ["groups"], verbs: ["impersonate"], resourceNames: ["oncall"]}
      - {apiGroups: ["authentication.k8s.io"], resources: ["uids"], verbs: ["impersonate"], resourceNames: ["user-alice"]}
      - {apiGroups: ["authentication.k8s.io"], resources: ["userextras/scopes"], verbs: ["impersonate"], resourceNames: ["view"]}
  - subjects: [{kind: User, name: alice}]
    namespaces: [shop]
    rules:
      - {apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list", "watch"]}
"#;

async fn sandbox() -> (Sandbox, kube::Client) {
    reflex::install_crypto_provider();
    let config = Config {
        rbac: Table::from_yaml(RBAC).unwrap(),
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    };
    let sb = Sandbox::start(config).await.unwrap();
    let client = sb.client("t-admin").await.unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
        .await
        .unwrap();
    (sb, client)
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "shop"}}, "data": {"v": v}})).unwrap()
}

fn rv(o: &impl kube::Resource) -> u64 {
    o.meta().resource_version.as_deref().unwrap().parse().unwrap()
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_delivers_ordered_events_and_410_after_compaction() {
    let (sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "shop");
    let first = cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
    let from = rv(&first).to_string();
    let mut stream = cms.watch(&WatchParams::default().timeout(10), &from).await.unwrap().boxed();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "2"}}))).await.unwrap();
    cms.create(&PostParams::default(), &cm("b", "1")).await.unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(("ADDED", o.metadata.name.clone().unwrap(), rv(&o))),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.metadata.name.clone().unwrap(), rv(&o))),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.metadata.name.clone().unwrap(), rv(&o))),
            other => panic!("unexpected {other:?}"),
        }
    }
    let kinds: Vec<(&str, &str)> = seen.iter().map(|(k, n, _)| (*k, n.as_str())).collect();
    assert_eq!(kinds, [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "resourceVersions increase: {seen:?}");
    assert!(seen[0].2 > rv(&first));

    // Compaction: watching from the old version, or continuing an old list, is now 410 Gone.
    cms.create(&PostParams::default(), &cm("c", "1")).await.unwrap();
    let page = cms.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.clone().expect("a second page");
    cms.create(&PostParams::default(), &cm("d", "1")).await.unwrap();
    sb.compact();
    let err = api_err(cms.list(&ListParams::default().limit(1).continue_token(&token)).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    let mut stale = cms.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
    match stale.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(e.message.starts_with("too old resource version"), "{}", e.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_and_initial_events() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "shop");
    cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
    let mut stream = cms.watch(&WatchParams::streaming_lists().timeout(10), "0").await.unwrap().boxed();
    let first = stream.try_next().await.unwrap().unwrap();
    assert!(matches!(first, WatchEvent::Added(ref o) if o.metadata.name.as_deref() == Some("a")), "{first:?}");
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
        }
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
    let b = cms.create(&PostParams::default(), &cm("b", "1")).await.unwrap();
    // Progress elsewhere (another namespace) reaches this watch only as a bookmark.
    let elsewhere = Api::<ConfigMap>::namespaced(cms.clone().into_client(), "default")
        .create(&PostParams::default(), &cm("x", "1"))
        .await
        .unwrap();
    let mut saw_b = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await.unwrap().unwrap().unwrap() {
            WatchEvent::Added(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("b"), "only this namespace's objects arrive");
                saw_b = true;
            }
            WatchEvent::Bookmark(bm) if saw_b => {
                let at: u64 = bm.metadata.resource_version.parse().unwrap();
                assert!(at > rv(&b) && at >= rv(&elsewhere), "bookmark at {at}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn optimistic_concurrency_status_and_generation() {
    let (_sb, client) = sandbox().await;
    let deploys: Api<Deployment> = Api::namespaced(client, "shop");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}}},
        "status": {"replicas": 99}}))
    .unwrap();
    let created = deploys.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is ignored on create");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // A stale resourceVersion is a 409 Conflict.
    let mut stale = created.clone();
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})))
        .await
        .unwrap();
    stale.spec.replicas = Some(2);
    let err = api_err(deploys.replace("web", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(err.message.contains("the object has been modified"));

    // Metadata changes do not bump generation; spec changes do; status writes go through /status only.
    let labelled = deploys.get("web").await.unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let scaled = deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"replicas": 42}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_ne!(scaled.status.as_ref().and_then(|s| s.replicas), Some(42), "status on the main resource is ignored");
    let st = deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}, "status": {"observedGeneration": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().observed_generation, Some(5));
    assert_eq!(st.spec.replicas, Some(3), "spec on /status is ignored");
    assert_eq!(st.metadata.generation, Some(2));
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "shop");
    let mut c = cm("held", "1");
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    let deleted = cms.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = deleted.left().expect("the object comes back while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    // No new finalizers while deleting.
    let err = api_err(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x/y"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(api_err(cms.get("held").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn server_side_apply_conflicts_and_strategic_merge() {
    let (_sb, client) = sandbox().await;
    let deploys: Api<Deployment> = Api::namespaced(client, "shop");
    let manifest = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "web:1", "resources": {"limits": {"memory": "64Mi"}}}, {"name": "proxy", "image": "envoy:1"}]}}}});
    let created = deploys.patch("web", &PatchParams::apply("gitops"), &Patch::Apply(manifest)).await.unwrap();
    let managers: Vec<String> =
        created.metadata.managed_fields.unwrap().iter().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, ["gitops"]);

    let fix = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
    let err =
        api_err(deploys.patch("web", &PatchParams::apply("reflex"), &Patch::Apply(fix.clone())).await.unwrap_err());
    assert_eq!(err.code, 409);
    assert!(err.message.contains("conflict with \"gitops\""), "{}", err.message);
    assert!(
        err.message.contains(".spec.template.spec.containers[name=\"app\"].resources.limits.memory"),
        "{}",
        err.message
    );
    let forced = deploys.patch("web", &PatchParams::apply("reflex").force(), &Patch::Apply(fix)).await.unwrap();
    let containers = forced.spec.template.spec.unwrap().containers;
    assert_eq!(containers.len(), 2, "the other container is untouched");
    assert_eq!(containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "128Mi");

    // Strategic merge: containers merge by name.
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:2"}]}}}});
    let patched = deploys.patch("web", &PatchParams::default(), &Patch::Strategic(smp)).await.unwrap();
    let cs = patched.spec.template.spec.unwrap().containers;
    assert_eq!((cs.len(), cs[1].image.as_deref(), cs[0].image.as_deref()), (2, Some("envoy:2"), Some("web:1")));
}

#[tokio::test]
async fn dry_run_validates_without_storing() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "shop");
    let out = cms.create(&PostParams { dry_run: true, ..Default::default() }, &cm("ghost", "1")).await.unwrap();
    assert_eq!(out.metadata.name.as_deref(), Some("ghost"));
    assert_eq!(api_err(cms.get("ghost").await.unwrap_err()).code, 404);
    cms.create(&PostParams::default(), &cm("real", "1")).await.unwrap();
    let dry =
        cms.patch("real", &PatchParams::default().dry_run(), &Patch::Merge(json!({"data": {"v": "2"}}))).await.unwrap();
    assert_eq!(dry.data.unwrap()["v"], "2");
    assert_eq!(cms.get("real").await.unwrap().data.unwrap()["v"], "1");
    cms.delete("real", &DeleteParams { dry_run: true, ..Default::default() }).await.unwrap();
    assert!(cms.get("real").await.is_ok());
    let bad = api_err(
        cms.create(&PostParams { dry_run: true, ..Default::default() }, &cm("Not_A_Name", "1")).await.unwrap_err(),
    );
    assert_eq!(bad.code, 422, "dry-run still validates");
}

#[tokio::test]
async fn lists_paginate_and_select() {
    let (_sb, client) = sandbox().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "shop");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"), "1")).await.unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    // A write between pages does not change what the continued list shows (same snapshot).
    cms.create(&PostParams::default(), &cm("c9", "1")).await.unwrap();
    let rest = cms
        .list(&ListParams::default().limit(10).continue_token(first.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    let names: Vec<String> =
        first.items.iter().chain(rest.items.iter()).map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);
    let sel = cms.list(&ListParams::default().fields("metadata.name=c3").labels("app=shop")).await.unwrap();
    assert_eq!(sel.items.len(), 1);
    let err = api_err(cms.list(&ListParams::default().fields("data.v=1")).await.unwrap_err());
    assert_eq!(err.code, 400);
    assert!(err.message.contains("field label not supported"));
}

/// As on kube-apiserver, `Impersonate-Uid` and each `Impersonate-Extra-*` value need the
/// `impersonate` verb on `uids` and `userextras/<key>` (authentication.k8s.io) of their own:
/// granted ones carry over to the identity, others are 403 naming what is missing, and a uid
/// without a user is refused.
#[tokio::test]
async fn impersonating_a_uid_or_extra_needs_its_own_permission() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let (sb, _) = sandbox().await;
    let client = |uid: Option<&str>, extra: Option<(&str, &str)>, user: Option<&str>| {
        let sb = &sb;
        let (uid, extra, user) =
            (uid.map(str::to_owned), extra.map(|(k, v)| (k.to_owned(), v.to_owned())), user.map(str::to_owned));
        async move {
            let kc = kube::config::Kubeconfig::from_yaml(&sb.kubeconfig("t-operator")).unwrap();
            let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
            config.auth_info.impersonate = user;
            config.auth_info.impersonate_uid = uid;
            config.auth_info.impersonate_user_extra = extra.map(|(k, v)| [(k, vec![v])].into_iter().collect());
            kube::Client::try_from(config).unwrap()
        }
    };
    let who = |c: kube::Client| async move {
        let review = SelfSubjectReview::default();
        Api::<SelfSubjectReview>::all(c).create(&PostParams::default(), &review).await
    };
    let me = who(client(Some("user-alice"), Some(("scopes", "view")), Some("alice")).await).await.unwrap();
    let info = me.status.unwrap().user_info.unwrap();
    assert_eq!((info.username.as_deref(), info.uid.as_deref()), (Some("alice"), Some("user-alice")));
    assert_eq!(info.extra.unwrap()["scopes"], vec!["view".to_owned()]);
    let err = api_err(who(client(Some("someone-else"), None, Some("alice")).await).await.unwrap_err());
    assert!(err.code == 403 && err.message.contains("cannot impersonate resource \"uids\""), "{}", err.message);
    let err = api_err(who(client(None, Some(("scopes", "admin")), Some("alice")).await).await.unwrap_err());
    assert!(err.code == 403 && err.message.contains("userextras/scopes"), "{}", err.message);
    let err = api_err(who(client(Some("user-alice"), None, None).await).await.unwrap_err());
    assert!(err.code == 403 && err.message.contains("without impersonating a user"), "{}", err.message);
}

/// TokenReview as kube-apiserver answers it: a ServiceAccount token's identity carries its
/// credential id; a token is only good for the audiences it was minted for.
#[tokio::test]
async fn token_reviews_carry_extras_and_judge_audiences() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    let rbac = r#"
users:
  - {name: admin, token: t-admin, groups: ["system:masters"]}
  - {name: carol, token: t-carol, audiences: [reflex]}
serviceAccounts:
  - {namespace: shop, name: app, token: t-app}
"#;
    let sb = Sandbox::start(Config { rbac: Table::from_yaml(rbac).unwrap(), ..Config::default() }).await.unwrap();
    let admin = sb.client("t-admin").await.unwrap();
    let review = |token: &str, audiences: Option<Vec<&str>>| {
        let admin = admin.clone();
        let r: TokenReview = serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}})).unwrap();
        async move { Api::<TokenReview>::all(admin).create(&PostParams::default(), &r).await.unwrap().status.unwrap() }
    };
    let app = review("t-app", None).await;
    assert_eq!(app.authenticated, Some(true));
    let user = app.user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:shop:app"));
    assert!(user.extra.unwrap()["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));
    assert_eq!(app.audiences, Some(vec![reflex::sandbox::rbac::API_AUDIENCE.to_owned()]));
    let carol = review("t-carol", None).await;
    assert_eq!(carol.authenticated, Some(false), "minted for reflex, not the API server");
    assert!(carol.error.unwrap().contains("invalid for the target audiences"));
    let carol = review("t-carol", Some(vec!["reflex", "other"])).await;
    assert_eq!((carol.authenticated, carol.audiences), (Some(true), Some(vec!["reflex".to_owned()])));
    // Nor may carol's token call the API server itself.
    let err = api_err(
        Api::<ConfigMap>::namespaced(sb.client("t-carol").await.unwrap(), "shop")
            .list(&Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 401);
}

#[tokio::test]
async fn impersonation_is_allowed_for_one_identity_and_forbidden_for_another() {
    let (sb, admin) = sandbox().await;
    Api::<ConfigMap>::namespaced(admin, "shop").create(&PostParams::default(), &cm("app-config", "1")).await.unwrap();
    let as_user = |user: &'static str| {
        let sb = &sb;
        async move {
            let kc = kube::config::Kubeconfig::from_yaml(&sb.kubeconfig("t-operator")).unwrap();
            let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
            config.auth_info.impersonate = Some(user.to_owned());
            config.auth_info.impersonate_groups = Some(vec!["oncall".to_owned()]);
            kube::Client::try_from(config).unwrap()
        }
    };
    // The operator may impersonate alice and bob; alice (in group oncall) may read configmaps in shop.
    let alice = as_user("alice").await;
    let got = Api::<ConfigMap>::namespaced(alice.clone(), "shop").get("app-config").await.unwrap();
    assert_eq!(got.data.unwrap()["v"], "1");
    let denied = api_err(Api::<ConfigMap>::namespaced(alice, "default").list(&Default::default()).await.unwrap_err());
    assert_eq!(denied.code, 403);
    // Impersonating bob: the operator may, but bob has no grant (the group header is not his).
    let bob_kc = {
        let kc = kube::config::Kubeconfig::from_yaml(&sb.kubeconfig("t-operator")).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        config.auth_info.impersonate = Some("bob".to_owned());
        kube::Client::try_from(config).unwrap()
    };
    let err = api_err(Api::<ConfigMap>::namespaced(bob_kc, "shop").get("app-config").await.unwrap_err());
    assert_eq!(err.code, 403);
    assert_eq!(err.reason, "Forbidden");
    assert_eq!(
        err.message,
        "configmaps \"app-config\" is forbidden: User \"bob\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"shop\""
    );
    // Alice herself may not impersonate anyone.
    let kc = kube::config::Kubeconfig::from_yaml(&sb.kubeconfig("t-alice")).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    config.auth_info.impersonate = Some("admin".to_owned());
    let err = api_err(
        Api::<ConfigMap>::namespaced(kube::Client::try_from(config).unwrap(), "shop")
            .get("app-config")
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    assert!(err.message.contains("cannot impersonate resource \"users\""), "{}", err.message);
    // A bad token is 401.
    let err = api_err(
        Api::<ConfigMap>::namespaced(sb.client("nope").await.unwrap(), "shop").get("app-config").await.unwrap_err(),
    );
    assert_eq!(err.code, 401);
}

#[tokio::test]
async fn review_apis_answer_from_the_rbac_table() {
    let (sb, admin) = sandbox().await;
    let post = |client: kube::Client, path: &'static str, body: Value| async move {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        client.request::<Value>(req).await.unwrap()
    };
    let sar = |user: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["oncall"], "resourceAttributes": {"verb": "list", "resource": "configmaps", "namespace": ns}}})
    };
    let allowed = post(admin.clone(), "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar("alice", "shop")).await;
    assert_eq!(allowed["status"]["allowed"], true);
    let denied =
        post(admin.clone(), "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar("alice", "default")).await;
    assert_eq!(denied["status"]["allowed"], false);
    let tr = post(
        admin.clone(),
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "t-alice"}}),
    )
    .await;
    assert_eq!(tr["status"]["authenticated"], true);
    assert_eq!(tr["status"]["user"]["username"], "alice");
    let bad = post(
        admin.clone(),
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "forged"}}),
    )
    .await;
    assert_eq!(bad["status"]["authenticated"], false);
    // SelfSubjectAccessReview through the typed API, as alice.
    let alice = sb.client("t-alice").await.unwrap();
    let ssar: SelfSubjectAccessReview = serde_json::from_value(
        json!({"spec": {"resourceAttributes": {"verb": "get", "resource": "configmaps", "namespace": "shop"}}}),
    )
    .unwrap();
    let answer = Api::<SelfSubjectAccessReview>::all(alice).create(&PostParams::default(), &ssar).await.unwrap();
    assert!(answer.status.unwrap().allowed);
}

#[tokio::test]
async fn crds_register_at_run_time_and_their_schema_is_enforced() {
    let (_sb, client) = sandbox().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = serde_json::from_value(json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
          "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "required": ["size"],
            "properties": {"size": {"type": "integer", "maximum": 10}}}, "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}})).unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    assert!(conds.iter().any(|c| c.type_ == "Established" && c.status == "True"));
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &ar);
    let ok: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}),
    )
    .unwrap();
    widgets.create(&PostParams::default(), &ok).await.unwrap();
    let bad: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}, "spec": {"size": 11}}),
    )
    .unwrap();
    let err = api_err(widgets.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.contains("spec.size"), "{}", err.message);
    // Deleting the CRD removes its objects and its kind.
    crds.delete("widgets.example.com", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(widgets.list(&Default::default()).await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn a_template_change_rolls_out_a_new_replicaset_and_status_converges() {
    let (_sb, client) = sandbox().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "shop");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "checkout"}, "spec": {"replicas": 2,
        "selector": {"matchLabels": {"app": "checkout"}}, "template": {"metadata": {"labels": {"app": "checkout"}},
        "spec": {"containers": [{"name": "app", "image": "checkout:1", "resources": {"limits": {"memory": "64Mi"}}}]}}}})).unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let converged = |generation: i64| {
        let deploys = deploys.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let d = deploys.get("checkout").await.unwrap();
                let s = d.status.clone().unwrap_or_default();
                if s.observed_generation == Some(generation)
                    && s.updated_replicas == Some(2)
                    && s.available_replicas == Some(2)
                    && s.replicas == Some(2)
                {
                    return d;
                }
                assert!(tokio::time::Instant::now() < deadline, "not converged: {s:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let v1 = converged(1).await;
    assert_eq!(v1.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"], "1");
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
    deploys.patch("checkout", &PatchParams::default(), &Patch::Strategic(smp)).await.unwrap();
    let v2 = converged(2).await;
    assert_eq!(v2.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"], "2");
    let sets = rss.list(&ListParams::default().labels("app=checkout")).await.unwrap();
    let mut replicas: Vec<(String, i32)> = sets
        .items
        .iter()
        .map(|r| {
            (
                r.metadata.annotations.clone().unwrap()["deployment.kubernetes.io/revision"].clone(),
                r.spec.replicas.unwrap(),
            )
        })
        .collect();
    replicas.sort();
    assert_eq!(replicas, [("1".to_owned(), 0), ("2".to_owned(), 2)]);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "shop");
    let running = pods.list(&ListParams::default().labels("app=checkout")).await.unwrap();
    assert_eq!(running.items.len(), 2, "old pods are gone");
    assert!(running.items.iter().all(|p| {
        p.spec.as_ref().unwrap().containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0
            == "128Mi"
    }));
}

#[tokio::test]
async fn bad_input_gets_kubernetes_status_bodies() {
    let (_sb, client) = sandbox().await;
    let raw = |method: &str, path: &str, ctype: &str, body: Vec<u8>| {
        http::Request::builder().method(method).uri(path).header("content-type", ctype).body(body).unwrap()
    };
    let status = |r: Result<String, kube::Error>| api_err(r.unwrap_err());
    let s = status(
        client
            .request_text(raw("POST", "/api/v1/namespaces/shop/configmaps", "application/json", b"{not json".to_vec()))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    let s = status(
        client
            .request_text(raw("GET", "/apis/example.com/v1/namespaces/shop/gadgets", "application/json", vec![]))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    let s = status(
        client
            .request_text(raw(
                "POST",
                "/api/v1/namespaces/shop/configmaps",
                "application/vnd.kubernetes.protobuf",
                b"x".to_vec(),
            ))
            .await,
    );
    // Protobuf is understood for built-in kinds (kubectl sends it); a body that is not the
    // protobuf envelope is a 400 naming why.
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert!(s.message.contains("not a Kubernetes protobuf body"), "{}", s.message);
    let s = status(
        client
            .request_text(raw("POST", "/api/v1/namespaces/shop/configmaps", "application/x-protobuf", b"x".to_vec()))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (415, "UnsupportedMediaType"));
    let s = status(
        client.request_text(raw("PATCH", "/api/v1/namespaces/shop/configmaps/x", "text/plain", b"{}".to_vec())).await,
    );
    assert_eq!(s.code, 415);
    let huge =
        serde_json::to_vec(&json!({"metadata": {"name": "big"}, "data": {"v": "x".repeat(4 * 1024 * 1024)}})).unwrap();
    let s =
        status(client.request_text(raw("POST", "/api/v1/namespaces/shop/configmaps", "application/json", huge)).await);
    assert_eq!((s.code, s.reason.as_str()), (413, "RequestEntityTooLarge"));
    let s = status(
        client
            .request_text(raw(
                "POST",
                "/api/v1/namespaces/nowhere/configmaps",
                "application/json",
                serde_json::to_vec(&json!({"metadata": {"name": "a"}})).unwrap(),
            ))
            .await,
    );
    assert_eq!((s.code, s.message.as_str()), (404, "namespaces \"nowhere\" not found"));
    let s = status(
        client
            .request_text(raw(
                "POST",
                "/api/v1/namespaces/shop/configmaps",
                "application/json",
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}})).unwrap(),
            ))
            .await,
    );
    assert_eq!(s.code, 400);
}

#[tokio::test]
async fn an_idle_connection_does_not_block_others_and_odd_input_does_not_break_the_server() {
    let (sb, client) = sandbox().await;
    // A client that connects and never starts TLS.
    let addr = sb.url().trim_start_matches("https://").to_owned();
    let _idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    tokio::time::timeout(Duration::from_secs(5), cms.create(&PostParams::default(), &cm("a", "1")))
        .await
        .expect("served despite the idle client")
        .unwrap();
    // A JSON patch replacing the root with a number: a 422, not a dropped connection.
    let req = http::Request::patch("/api/v1/namespaces/shop/configmaps/a")
        .header("content-type", "application/json-patch+json")
        .body(br#"[{"op":"replace","path":"","value":1}]"#.to_vec())
        .unwrap();
    assert_eq!(api_err(client.request_text(req).await.unwrap_err()).code, 422);
    // A Deployment whose labels are not a map is refused before the workload model sees it.
    let req = http::Request::post("/apis/apps/v1/namespaces/shop/deployments").header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": []}, "template": {"metadata": {"labels": "x"}}}})).unwrap()).unwrap();
    assert_eq!(api_err(client.request_text(req).await.unwrap_err()).code, 422);
    // DELETE on a status subresource is not a delete of the object.
    let req = http::Request::delete("/apis/apps/v1/namespaces/shop/deployments/d/status").body(vec![]).unwrap();
    assert_eq!(api_err(client.request_text(req).await.unwrap_err()).code, 405);
    assert!(cms.get("a").await.is_ok());
}

#[tokio::test]
async fn cluster_wide_pages_keep_namespace_order() {
    let (_sb, client) = sandbox().await;
    for ns in ["team", "team-a"] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await
            .unwrap();
    }
    for (ns, name) in [("team", "x"), ("team", "y"), ("team-a", "z")] {
        Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm(name, "1")).await.unwrap();
    }
    let all: Api<ConfigMap> = Api::all(client);
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(1);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = all.list(&lp).await.unwrap();
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.clone();
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names, ["x", "y", "z"]);
}

/// `expected` holds within `actual`: every key it names, recursively; lists item by item, of
/// the same length (what the server adds to an item — defaults — is not compared).
fn holds(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|x| holds(v, x))),
        (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(x, y)| holds(x, y)),
        _ => expected == actual,
    }
}

/// Strategic merge as Kubernetes documents it — merge keys, `$patch`, `$retainKeys`,
/// `$deleteFromPrimitiveList`, `$setElementOrder`, null deletions, atomic lists — from a
/// fixture table written independently of the code: the emulation the patch-safety check
/// judges by and the sandbox's PATCH must both give each expected object, so neither can
/// quietly share a bug with the other.
#[tokio::test]
async fn strategic_merge_gives_the_documented_results_in_the_emulation_and_the_sandbox() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (_sb, admin) = sandbox().await;
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/strategic-merge.json").unwrap()).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 15, "{} cases", cases.len());
    let deployments = Api::<Deployment>::namespaced(admin, "default");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let emulated = reflex::patch::safety::apply(
            reflex::api::playbook::PatchType::Strategic,
            &case["original"],
            &case["patch"],
        )
        .unwrap();
        if !holds(&case["expected"], &emulated) {
            failures.push(format!("{name}: the emulation gave {emulated}"));
        }
        let mut original = case["original"].clone();
        original["metadata"]["name"] = json!(format!("web-{i}"));
        let created: Deployment = serde_json::from_value(original).unwrap();
        deployments.create(&PostParams::default(), &created).await.unwrap();
        let stored = deployments
            .patch(&format!("web-{i}"), &PatchParams::default(), &Patch::Strategic(case["patch"].clone()))
            .await
            .unwrap();
        let stored = serde_json::to_value(stored).unwrap();
        if !holds(&case["expected"], &stored) {
            failures.push(format!("{name}: the sandbox stored {stored}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A token minted by a TokenRequest is good while its ServiceAccount exists, as on
/// kube-apiserver: once the ServiceAccount is deleted, a review says so and the API refuses it.
#[tokio::test]
async fn a_minted_token_dies_with_its_service_account() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let (sb, admin) = sandbox().await;
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), "shop");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request("reader", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let review = |token: String| {
        let admin = admin.clone();
        async move {
            let r: TokenReview = serde_json::from_value(json!({"spec": {"token": token}})).unwrap();
            Api::<TokenReview>::all(admin).create(&PostParams::default(), &r).await.unwrap().status.unwrap()
        }
    };
    let alive = review(token.clone()).await;
    assert_eq!(alive.authenticated, Some(true));
    assert_eq!(alive.user.unwrap().username.as_deref(), Some("system:serviceaccount:shop:reader"));
    // GET as the token: authenticated (RBAC grants it nothing, so 403, not 401).
    let as_reader = sb.client(&token).await.unwrap();
    let err =
        api_err(Api::<ConfigMap>::namespaced(as_reader.clone(), "shop").list(&Default::default()).await.unwrap_err());
    assert_eq!(err.code, 403);
    accounts.delete("reader", &Default::default()).await.unwrap();
    let dead = review(token.clone()).await;
    assert_eq!(dead.authenticated, Some(false));
    assert!(dead.error.unwrap().contains("no longer exists"));
    let err = api_err(Api::<ConfigMap>::namespaced(as_reader, "shop").list(&Default::default()).await.unwrap_err());
    assert_eq!(err.code, 401);
}
