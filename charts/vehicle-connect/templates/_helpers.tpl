{{/* Chart name, overridable. */}}
{{- define "vehicle-connect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name contains it. */}}
{{- define "vehicle-connect.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vehicle-connect.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries (not the selector, which a StatefulSet cannot change). */}}
{{- define "vehicle-connect.labels" -}}
helm.sh/chart: {{ include "vehicle-connect.chart" . }}
{{ include "vehicle-connect.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vehicle-connect
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the operator pod (immutable in the StatefulSet). */}}
{{- define "vehicle-connect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vehicle-connect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vehicle-connect.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vehicle-connect.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is set (it pins the exact image), else repository:tag. */}}
{{- define "vehicle-connect.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The headless Service the StatefulSet names (serviceName): gives the pod its DNS name. */}}
{{- define "vehicle-connect.headlessServiceName" -}}
{{- printf "%s-headless" (include "vehicle-connect.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the ingest tokens, or "" when there is none. */}}
{{- define "vehicle-connect.ingestTokenSecretName" -}}
{{- if .Values.ingestTokenSecret.existingSecret }}
{{- .Values.ingestTokenSecret.existingSecret }}
{{- else if .Values.ingestTokens }}
{{- printf "%s-ingest-tokens" (include "vehicle-connect.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret holding the feed tokens, or "" when there is none. */}}
{{- define "vehicle-connect.feedTokenSecretName" -}}
{{- if .Values.feedTokenSecret.existingSecret }}
{{- .Values.feedTokenSecret.existingSecret }}
{{- else if .Values.feedTokens }}
{{- printf "%s-feed-tokens" (include "vehicle-connect.fullname" .) }}
{{- end }}
{{- end }}

{{- define "vehicle-connect.feedTokenKey" -}}
{{- if .Values.feedTokenSecret.existingSecret }}
{{- .Values.feedTokenSecret.key }}
{{- else }}
{{- "tokens" }}
{{- end }}
{{- end }}

{{/* The Secret holding the manage tokens, or "" when there is none. */}}
{{- define "vehicle-connect.manageTokenSecretName" -}}
{{- if .Values.manageTokenSecret.existingSecret }}
{{- .Values.manageTokenSecret.existingSecret }}
{{- else if .Values.manageTokens }}
{{- printf "%s-manage-tokens" (include "vehicle-connect.fullname" .) }}
{{- end }}
{{- end }}

{{- define "vehicle-connect.manageTokenKey" -}}
{{- if .Values.manageTokenSecret.existingSecret }}
{{- .Values.manageTokenSecret.key }}
{{- else }}
{{- "tokens" }}
{{- end }}
{{- end }}

{{- define "vehicle-connect.ingestTokenKey" -}}
{{- if .Values.ingestTokenSecret.existingSecret }}
{{- .Values.ingestTokenSecret.key }}
{{- else }}
{{- "tokens" }}
{{- end }}
{{- end }}

{{/* The pod's affinity: .Values.affinity, plus (with the JetStream store, unless it sets
podAntiAffinity itself) a preferred anti-affinity that spreads the replicas over nodes. */}}
{{- define "vehicle-connect.affinity" -}}
{{- $affinity := deepCopy .Values.affinity }}
{{- if and .Values.store.nats.url (not (hasKey $affinity "podAntiAffinity")) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "vehicle-connect.selectorLabels" . | fromYaml)) }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}
