#![allow(clippy::unwrap_used, clippy::expect_used)]
//! kubectl against the sandbox: registering Reflex's CRDs with `kubectl apply -f crds/`, then
//! get/describe/apply/patch/delete on remediations and deployments, as a user would.
//! `make test` installs kubectl when the machine lacks one; set KUBECTL to use another.

use std::path::PathBuf;
use std::process::Command;

use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};

struct Kubectl {
    bin: String,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl as the sandbox's administrator, with its kubeconfig in a fresh directory
    /// (returned, for the test to remove).
    fn admin_of(sandbox: &Sandbox, what: &str) -> (Self, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "reflex-{what}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        sandbox.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
        (Self { bin: std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()), kubeconfig }, dir)
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut cmd = Command::new(&self.bin);
        // Discovery is cached per test (kubectl's default cache is keyed by host:port, which a
        // later sandbox may reuse with other resources).
        let cache = self.kubeconfig.with_file_name("kube-cache");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(cache).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); `make test` installs kubectl, or set KUBECTL", self.bin));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Run and require success; returns the output.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args, None);
        assert!(ok, "kubectl {args:?} failed:\n{out}");
        out
    }

    fn apply(&self, manifest: &str) -> String {
        let (ok, out) = self.run(&["apply", "-f", "-"], Some(manifest));
        assert!(ok, "kubectl apply failed:\n{out}\n{manifest}");
        out
    }
}

const REMEDIATION: &str = r#"
apiVersion: reflex.dev/v1alpha1
kind: Remediation
metadata:
  name: checkout-oom
  labels: {team: shop, tier: web}
spec:
  policyRef: {name: checkout-oom}
  target: {apiVersion: apps/v1, kind: Deployment, name: checkout}
  alert: {name: KubeContainerOOMKilled, fingerprint: f00d, labels: {deployment: checkout}, startsAt: "2026-01-01T00:00:00Z"}
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
spec:
  replicas: 2
  selector: {matchLabels: {app: checkout}}
  template:
    metadata: {labels: {app: checkout}}
    spec:
      containers:
      - name: app
        image: shop/checkout:1.0
        resources: {limits: {memory: 64Mi}}
      - name: proxy
        image: envoy:1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_manages_reflex_crds_remediations_and_deployments() {
    reflex::install_crypto_provider();
    let sandbox = Sandbox::start(Config::default()).await.unwrap();
    let (k, dir) = Kubectl::admin_of(&sandbox, "kubectl");
    let crds_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");

    // kubectl blocks on I/O; keep it off the runtime's worker threads.
    tokio::task::spawn_blocking(move || {
        let out = k.ok(&["apply", "-f", crds_dir]);
        assert_eq!(out.matches("created").count(), 4, "{out}");
        let crds = k.ok(&["get", "crds", "-o", "name"]);
        assert!(crds.contains("customresourcedefinition.apiextensions.k8s.io/remediations.reflex.dev"), "{crds}");
        let resources = k.ok(&["api-resources", "--api-group=reflex.dev"]);
        assert!(resources.contains("remediations") && resources.contains("rem,rems"), "{resources}");

        // Remediations: apply, get (printer columns), describe, patch, 3-way apply, delete.
        assert!(k.apply(REMEDIATION).contains("remediation.reflex.dev/checkout-oom created"));
        let table = k.ok(&["get", "remediations"]);
        assert!(table.contains("PHASE") && table.contains("TARGET") && table.contains("checkout-oom"), "{table}");
        let wide = k.ok(&["get", "rem", "-o", "wide"]);
        assert!(wide.contains("KubeContainerOOMKilled") && wide.contains("Deployment"), "{wide}");
        let described = k.ok(&["describe", "remediation", "checkout-oom"]);
        assert!(described.contains("Policy Ref") && described.contains("f00d"), "{described}");
        assert!(k.ok(&["patch", "rem", "checkout-oom", "--type=merge", "-p", r#"{"spec":{"cancel":true}}"#]).contains("patched"));
        let cancel = k.ok(&["get", "rem", "checkout-oom", "-o", "jsonpath={.spec.cancel}"]);
        assert_eq!(cancel.trim(), "true");
        // The CRD's CEL rule: cancel is one-way.
        let (ok, out) = k.run(&["patch", "rem", "checkout-oom", "--type=merge", "-p", r#"{"spec":{"cancel":false}}"#], None);
        assert!(!ok && out.contains("cancel cannot be undone"), "{out}");
        // Strategic merge is refused for custom resources, as on a real cluster.
        let (ok, out) = k.run(&["patch", "rem", "checkout-oom", "-p", r#"{"metadata":{"labels":{"x":"y"}}}"#], None);
        assert!(!ok && out.contains("strategic-merge-patch"), "{out}");
        // Re-applying without a label removes it (three-way merge through last-applied).
        let relabelled = REMEDIATION.replace("labels: {team: shop, tier: web}", "labels: {team: shop}");
        assert!(k.apply(&relabelled).contains("configured"));
        let labels = k.ok(&["get", "rem", "checkout-oom", "-o", "jsonpath={.metadata.labels}"]);
        assert!(labels.contains("team") && !labels.contains("tier"), "{labels}");
        assert!(k.ok(&["delete", "rem", "checkout-oom"]).contains("deleted"));
        let (ok, out) = k.run(&["get", "rem", "checkout-oom"], None);
        assert!(!ok && out.contains("NotFound"), "{out}");

        // Deployments: apply, rollout, strategic patch, describe, delete.
        assert!(k.apply(DEPLOYMENT).contains("deployment.apps/checkout created"));
        k.ok(&["rollout", "status", "deployment/checkout", "--timeout=20s"]);
        let got = k.ok(&["get", "deploy", "checkout"]);
        assert!(got.contains("2/2"), "{got}");
        let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","resources":{"limits":{"memory":"128Mi"}}}]}}}}"#;
        assert!(k.ok(&["patch", "deployment", "checkout", "-p", patch]).contains("patched"));
        k.ok(&["rollout", "status", "deployment/checkout", "--timeout=20s"]);
        let images = k.ok(&["get", "deploy", "checkout", "-o", "jsonpath={.spec.template.spec.containers[*].name}"]);
        assert_eq!(images.trim(), "app proxy", "strategic merge kept the other container");
        let described = k.ok(&["describe", "deployment", "checkout"]);
        assert!(described.contains("memory:") && described.contains("128Mi") && described.contains("NewReplicaSetAvailable"), "{described}");
        let history = k.ok(&["rollout", "history", "deployment/checkout"]);
        let revisions: Vec<&str> = history.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
        assert_eq!(revisions, ["1", "2"], "{history}");
        // `kubectl auth can-i` posts its SelfSubjectAccessReview in protobuf.
        assert_eq!(k.ok(&["auth", "can-i", "delete", "deployments"]).trim(), "yes");
        assert!(k.ok(&["delete", "deployment", "checkout"]).contains("deleted"));
        let left = k.ok(&["get", "rs,pods", "-l", "app=checkout", "-o", "name"]);
        assert!(left.trim().is_empty(), "owned ReplicaSets and Pods are garbage-collected: {left}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}

/// The RBAC table of the plugin test: alice is on call in `shop` (she may read Remediations,
/// cancel them and create RemediationApprovals); the administrator sets the scene.
const ONCALL_RBAC: &str = r#"
users:
  - {name: sandbox-admin, token: reflex-sandbox-admin, groups: ["system:masters"]}
  - {name: alice, token: t-alice}
  - {name: bob, token: t-bob}
grants:
  - subjects: [{kind: User, name: alice}, {kind: User, name: bob}]
    namespaces: [shop]
    rules:
      - {apiGroups: ["reflex.dev"], resources: ["remediations"], verbs: ["get", "list", "patch"]}
      - {apiGroups: ["reflex.dev"], resources: ["remediationapprovals"], verbs: ["create", "get", "list"]}
"#;

/// `kubectl reflex approve` — the reflex binary installed as the kubectl plugin
/// `kubectl-reflex` — creates the approval as the person at the keyboard: bound to the
/// Remediation's uid and its current proposal, with their own name as the approver. With the
/// shipped ValidatingAdmissionPolicy applied (by kubectl), nobody can approve as someone
/// else: bob creating an approval that names alice is denied with the policy's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reflex_approves_as_the_person_running_it() {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use reflex::api::approval::RemediationApproval;
    use reflex::api::remediation::Remediation;
    reflex::install_crypto_provider();
    let rbac = reflex::sandbox::rbac::Table::from_yaml(ONCALL_RBAC).unwrap();
    let sandbox = Sandbox::start(Config { rbac, ..Config::default() }).await.unwrap();
    sandbox.install_crds().unwrap();
    let admin = sandbox.client(ADMIN_TOKEN).await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}})).unwrap(),
        )
        .await
        .unwrap();
    let rems = Api::<Remediation>::namespaced(admin.clone(), "shop");
    let rem: Remediation = serde_saphyr::from_str(REMEDIATION).unwrap();
    let rem = rems.create(&PostParams::default(), &rem).await.unwrap();
    let status = serde_json::json!({"status": {"phase": "AwaitingApproval", "proposal": {"patchType": "strategic", "patch": {},
        "digest": "sha256:0a1b", "rationale": "raise the limit", "producedBy": "playbook"}}});
    rems.patch_status("checkout-oom", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();

    let dir = std::env::temp_dir().join(format!(
        "reflex-plugin-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    sandbox.write_kubeconfig(&kubeconfig, "t-alice").unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_reflex"), dir.join("kubectl-reflex")).unwrap();
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let run = move |args: &[&str]| {
        let out = Command::new(&kubectl).args(args).env("PATH", &path).env("KUBECONFIG", &kubeconfig).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["reflex", "approve", "checkout-oom", "-n", "shop", "--reason", "limit raise looks right"])
    })
    .await
    .unwrap();
    assert!(ok, "kubectl reflex approve failed:\n{out}");
    assert!(out.contains("alice approves proposal sha256:0a1b"), "{out}");

    let approvals =
        Api::<RemediationApproval>::namespaced(admin.clone(), "shop").list(&Default::default()).await.unwrap();
    let [approval] = approvals.items.as_slice() else { panic!("one approval: {:?}", approvals.items) };
    assert_eq!(approval.spec.approver, "alice", "the person, as the API server knows them");
    assert_eq!(approval.spec.remediation_ref.uid, rem.metadata.uid.clone().unwrap());
    assert_eq!(approval.spec.proposal_digest.as_deref(), Some("sha256:0a1b"));
    assert_eq!(approval.spec.reason.as_deref(), Some("limit raise looks right"));

    let describe = run.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || describe(&["reflex", "describe", "checkout-oom", "-n", "shop"]))
            .await
            .unwrap();
    assert!(ok && out.contains("phase      AwaitingApproval") && out.contains("sha256:0a1b"), "{out}");
    // `kubectl reflex explain`: the story, from status (Events may be hidden by RBAC).
    let (ok, out) =
        tokio::task::spawn_blocking(move || run(&["reflex", "explain", "checkout-oom", "-n", "shop"])).await.unwrap();
    assert!(ok && out.contains("Remediation shop/checkout-oom: AwaitingApproval"), "{out}");
    assert!(out.contains("The change (") && out.contains("Act: kubectl reflex describe checkout-oom -n shop"), "{out}");

    // The admission policies Reflex ships, applied with kubectl as a platform team would.
    let admin_kubeconfig = dir.join("admin-kubeconfig");
    sandbox.write_kubeconfig(&admin_kubeconfig, ADMIN_TOKEN).unwrap();
    let as_admin =
        Kubectl { bin: std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()), kubeconfig: admin_kubeconfig };
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/config/admission");
    let applied = tokio::task::spawn_blocking(move || as_admin.ok(&["apply", "-f", policies])).await.unwrap();
    assert_eq!(applied.matches("created").count(), 4, "{applied}");

    // Bob forges alice's approval: the admission policy refuses it, naming both.
    let bob = sandbox.client("t-bob").await.unwrap();
    let mut forged = approval.clone();
    forged.metadata =
        kube::api::ObjectMeta { name: Some("forged".into()), namespace: Some("shop".into()), ..Default::default() };
    forged.status = None;
    let denied =
        Api::<RemediationApproval>::namespaced(bob, "shop").create(&PostParams::default(), &forged).await.unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403
            && s.message.contains("ValidatingAdmissionPolicy 'reflex-approver-is-requester'")
            && s.message.contains("must be the user creating the approval (bob), not alice")),
        "{denied}"
    );

    // Only the operator writes status (it holds the records Reflex decides by): even a
    // cluster administrator's status write is refused.
    let forged_status = serde_json::json!({"status": {"phase": "Deploying"}});
    let denied =
        rems.patch_status("checkout-oom", &PatchParams::default(), &Patch::Merge(forged_status)).await.unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403
            && s.message.contains("only the Reflex operator writes this status, not sandbox-admin")),
        "{denied}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// kubectl sends built-in kinds as protobuf (`application/vnd.kubernetes.protobuf`): the
/// sandbox decodes them as kube-apiserver does, so `kubectl create` works as people use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_built_in_kinds_in_protobuf_and_asks_can_i() {
    reflex::install_crypto_provider();
    let sandbox = Sandbox::start(Config::default()).await.unwrap();
    let (k, dir) = Kubectl::admin_of(&sandbox, "kubectl-pb");
    tokio::task::spawn_blocking(move || {
        assert!(k.ok(&["create", "namespace", "demo"]).contains("namespace/demo created"));
        let ns = k.ok(&["get", "namespace", "demo", "-o", "jsonpath={.metadata.name} {.status.phase}"]);
        assert_eq!(ns.trim(), "demo Active");
        k.ok(&["create", "deployment", "web", "--image=registry.example.com/web:1.27", "--replicas=2", "--port=8080", "-n", "demo"]);
        let d = k.ok(&[
            "get", "deployment", "web", "-n", "demo", "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.selector.matchLabels.app} {.spec.template.spec.containers[0].ports[0].containerPort}",
        ]);
        assert_eq!(d.trim(), "2 registry.example.com/web:1.27 web 8080", "the fields the protobuf body carried");
        // kubectl scale: a patch of the scale subresource; with --current-replicas, a read of
        // the Scale and a PUT of it (in protobuf) under its resourceVersion.
        assert!(k.ok(&["scale", "deployment", "web", "--replicas=3", "-n", "demo"]).contains("scaled"));
        let replicas = || k.ok(&["get", "deployment", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas}"]);
        assert_eq!(replicas().trim(), "3");
        k.ok(&["scale", "deployment", "web", "--current-replicas=3", "--replicas=1", "-n", "demo"]);
        assert_eq!(replicas().trim(), "1");
        let (ok, out) = k.run(&["scale", "deployment", "web", "--current-replicas=3", "--replicas=2", "-n", "demo"], None);
        assert!(!ok && out.contains("Expected replicas to be 3, was 1"), "a precondition that does not hold refuses: {out}");
        // A Scale PUT under a stale resourceVersion is refused, as any write is.
        let stale = r#"{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"web","namespace":"demo","resourceVersion":"1"},"spec":{"replicas":5}}"#;
        let (ok, out) = k.run(&["replace", "--raw", "/apis/apps/v1/namespaces/demo/deployments/web/scale", "-f", "-"], Some(stale));
        assert!(!ok && out.contains("the object has been modified"), "{out}");
        assert_eq!(replicas().trim(), "1");
        k.ok(&["create", "secret", "generic", "token", "--from-literal=key=s3cr3t", "-n", "demo"]);
        let secret = k.ok(&["get", "secret", "token", "-n", "demo", "-o", "jsonpath={.data.key}"]);
        assert_eq!(secret.trim(), "czNjcjN0", "bytes arrive base64-encoded, as in JSON");
        k.ok(&["create", "configmap", "cfg", "--from-literal=POOL_SIZE=10", "-n", "demo"]);
        k.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "demo"]);
        let port = k.ok(&["get", "service", "web", "-n", "demo", "-o", "jsonpath={.spec.ports[0].targetPort}"]);
        assert_eq!(port.trim(), "8080", "an IntOrString read as a number");
        k.ok(&["create", "job", "once", "--image=busybox:1.36", "-n", "demo"]);
        assert_eq!(k.ok(&["auth", "can-i", "create", "pods", "-n", "demo"]).trim(), "yes");
        // Custom resources are JSON only, as on a real cluster: kubectl sends them as JSON.
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}
