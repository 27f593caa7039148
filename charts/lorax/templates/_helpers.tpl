{{/* Chart name, overridable. */}}
{{- define "lorax.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or the release name when it already contains the chart name. Kept short enough for "-engine-NN" suffixes. */}}
{{- define "lorax.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "lorax.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lorax.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select this release's pods (component labels are added per workload). */}}
{{- define "lorax.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lorax.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of engine number $i: "<fullname>-engine-<i>" (its Deployment, Service and claim). */}}
{{- define "lorax.engineName" -}}
{{- printf "%s-engine-%d" (include "lorax.fullname" .root) (int .index) }}
{{- end }}

{{/* Name of the Secret holding the tenants file. */}}
{{- define "lorax.tenantsSecret" -}}
{{- default (printf "%s-tenants" (include "lorax.fullname" .)) .Values.tenants.existingSecret }}
{{- end }}

{{/* Image reference; the tag defaults to the chart's appVersion. */}}
{{- define "lorax.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Where the gateway finds the tenants file. */}}
{{- define "lorax.tenantsDir" -}}
/etc/lorax/tenants
{{- end }}
