{{/*
Object names are fixed, as in daemonset/manifests: the DaemonSet is one per cluster, the installer looks up its
own DaemonSet by this name (MGW_DAEMONSET_NAME's default) and the ClusterRole grants "get" on it alone.
*/}}
{{- define "microgateway-cni.name" -}}
microgateway-cni
{{- end }}

{{- define "microgateway-cni.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "microgateway-cni.name" .) }}
{{- end }}

{{/* The labels every object gets: the two the kustomize overlays set, Helm's own, then commonLabels. */}}
{{- define "microgateway-cni.labels" -}}
app.kubernetes.io/name: {{ include "microgateway-cni.name" . }}
app.kubernetes.io/part-of: airlock-microgateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is set (it wins over the tag), else repository:tag (default appVersion). */}}
{{- define "microgateway-cni.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
