#!/usr/bin/env bash
# End to end on a real cluster: kind, kube-prometheus-stack (Prometheus, Alertmanager,
# kube-state-metrics), Reflex's image and chart, a workload that is OOM-killed, the policy
# pack — until Reflex has raised the memory limit and verified the fix.
#
# Needs docker, kind, kubectl, helm and a network (it cannot run in Reflex's own CI, which
# has none of them). In a GitHub Actions job: runs-on ubuntu-latest, then `e2e/run.sh`.
# Leaves the cluster for inspection unless KEEP=0.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${CLUSTER:-reflex-e2e}"
IMAGE="${IMAGE:-reflex:e2e}"
TIMEOUT="${TIMEOUT:-900}"   # seconds for the fix to be verified

step() { printf '\n== %s\n' "$*"; }

step "cluster and image"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "Reflex (chart), serving namespace shop"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace shop reflex.dev/environment=staging --overwrite
helm upgrade --install reflex charts/reflex --namespace reflex-system --create-namespace --wait \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE#*:}" --set image.pullPolicy=Never \
  --set 'namespaces={shop}' \
  --set prometheus.url=http://kps-kube-prometheus-stack-prometheus.monitoring.svc:9090 \
  --set alertmanager.url=http://kps-kube-prometheus-stack-alertmanager.monitoring.svc:9093 \
  --set serviceMonitor.enabled=true --set prometheusRule.enabled=true

step "Prometheus and Alertmanager (kube-prometheus-stack), routing to Reflex"
kubectl create namespace monitoring --dry-run=client -o yaml | kubectl apply -f -
# Alertmanager reads Reflex's webhook token from a copy of its Secret.
kubectl -n reflex-system get secret reflex-webhook -o jsonpath='{.data.token}' | base64 -d > /tmp/reflex-webhook-token
kubectl -n monitoring create secret generic reflex-webhook --from-file=token=/tmp/reflex-webhook-token \
  --dry-run=client -o yaml | kubectl apply -f -
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm upgrade --install kps prometheus-community/kube-prometheus-stack --namespace monitoring --wait --timeout 10m \
  --values e2e/kube-prometheus-stack.yaml

step "the workload, the playbooks and the policy pack (trust auto for the OOM policy)"
kubectl apply -n shop -f e2e/workload.yaml
for p in raise-memory-limit-if-oom-killed rollback-new-revision diagnose-failed-job \
         raise-hpa-max-on-saturation raise-cpu-limit; do
  kubectl apply -n shop -f "playbooks/$p.yaml"
done
kubectl apply -n shop -f policies/kubernetes-mixin.yaml
kubectl -n shop patch remediationpolicy kube-pod-crashlooping-oom --type merge -p '{"spec":{"trust":{"level":"auto"}}}'

step "waiting for a verified fix (up to ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
while :; do
  phase="$(kubectl -n shop get remediations -o jsonpath='{range .items[*]}{.spec.policyRef.name}={.status.phase}{"\n"}{end}' \
    | awk -F= '$1=="kube-pod-crashlooping-oom"{print $2}' | tail -1)"
  echo "$(date +%T) kube-pod-crashlooping-oom: ${phase:-no Remediation yet}"
  case "$phase" in
    Succeeded) break ;;
    Failed|RolledBack|Escalated|Cancelled) kubectl -n shop get remediations -o yaml; exit 1 ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || { kubectl -n shop get remediations -o yaml; exit 1; }
  sleep 10
done
limit="$(kubectl -n shop get deploy checkout -o jsonpath='{.spec.template.spec.containers[0].resources.limits.memory}')"
echo "verified: checkout's memory limit is now ${limit}"
[ "${KEEP:-1}" = 1 ] || kind delete cluster --name "$CLUSTER"
