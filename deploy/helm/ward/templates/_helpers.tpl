{{/*
The chart installs into ward-system only: the control plane's serving
certificate (DNS ward-control-plane.ward-system.svc), its reserved identity
spiffe://<td>/ns/ward-system/sa/ward-control-plane and the injector's default
control plane address are fixed to that namespace in the binaries.
*/}}
{{- define "ward.namespace" -}}
{{- if ne .Release.Namespace "ward-system" -}}
{{- fail (printf "Ward installs into namespace ward-system (helm install ... --namespace ward-system), not %q: the control plane's certificate and identity name ward-system" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/*
Labels of every object the chart renders. The first is deploy/base's; the
others are Helm's standard ones (tests/helm.rs removes exactly these four
before comparing with deploy/base). Pod templates and selectors do not get
them: a selector cannot change after install.
*/}}
{{- define "ward.labels" -}}
app.kubernetes.io/part-of: ward
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The labels of objects that belong to the control plane. */}}
{{- define "ward.controlPlaneLabels" -}}
app.kubernetes.io/name: ward-control-plane
{{ include "ward.labels" . }}
{{- end -}}

{{/* The control plane's selector (fixed: deploy/base's). */}}
{{- define "ward.selector" -}}
app.kubernetes.io/name: ward-control-plane
{{- end -}}

{{/* The control plane image. */}}
{{- define "ward.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The sidecar image the webhook injects. */}}
{{- define "ward.proxyImage" -}}
{{- .Values.injection.proxyImage | default (include "ward.image" .) -}}
{{- end -}}
