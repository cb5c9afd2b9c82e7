{{/* The release's name, as every object is named after it. */}}
{{- define "reflex.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "reflex.labels" -}}
app.kubernetes.io/name: reflex
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "reflex.selector" -}}
app.kubernetes.io/name: reflex
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The ServiceAccount of a role: the controller's is the release's name. */}}
{{- define "reflex.sa" -}}
{{- $root := index . 0 -}}{{- $role := index . 1 -}}
{{- if or (eq $role "controller") (not $root.Values.roles.split) -}}
{{- include "reflex.fullname" $root -}}
{{- else -}}
{{- printf "%s-%s" (include "reflex.fullname" $root) $role | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "reflex.user" -}}
{{- $root := index . 0 -}}
system:serviceaccount:{{ $root.Release.Namespace }}:{{ include "reflex.sa" . }}
{{- end -}}

{{- define "reflex.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "reflex.serviceHost" -}}
{{ include "reflex.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* The webhook's rules (its own ClusterRole, or the one Deployment's). */}}
{{- define "reflex.intakeRules" -}}
# Intake: a firing alert becomes a Remediation; its resolution is recorded in status.alert.
- apiGroups: ["reflex.dev"]
  resources: ["remediations"]
  verbs: ["create", "get", "list", "watch", "patch"]
- apiGroups: ["reflex.dev"]
  resources: ["remediations/status"]
  verbs: ["patch"]
# Intake: a Remediation is created only for a target that exists (its kinds, read).
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["get"]
# Intake: which policies match an alert.
- apiGroups: ["reflex.dev"]
  resources: ["remediationpolicies"]
  verbs: ["get", "list", "watch"]
# Intake: a Warning on the policy when an alert names nothing it acts on; the kill switch;
# A2A discovery (every role watches Services).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* The MCP and A2A server's rules. */}}
{{- define "reflex.mcpRules" -}}
# MCP and A2A: who a caller is (TokenReview), then every read and write as that caller.
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["users", "groups", "serviceaccounts"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["uids", "userextras/authentication.kubernetes.io/credential-id", "userextras/authentication.kubernetes.io/pod-name", "userextras/authentication.kubernetes.io/pod-uid", "userextras/authentication.kubernetes.io/node-name", "userextras/authentication.kubernetes.io/node-uid"]
  verbs: ["impersonate"]
# A2A: a remediate request is checked against the policy it names; every role's readiness
# follows the watches intake keeps (policies, Remediations, the kill switch).
- apiGroups: ["reflex.dev"]
  resources: ["remediationpolicies", "remediations"]
  verbs: ["get", "list", "watch"]
# Discovery watches Services; the kill switch is a ConfigMap.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch"]
{{- end -}}
