{{/* <release>-redis; the parent lily chart hard-codes this prefix. */}}
{{- define "redis.fullname" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "redis.selectorLabels" -}}
app.kubernetes.io/name: "redis"
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: "master"
{{- end -}}

{{- define "redis.labels" -}}
{{ include "redis.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Password, generated once per render (memoised) or reused from the installed Secret. */}}
{{- define "redis.password" -}}
{{- if not (hasKey .Values "__redisPassword") -}}
{{- $pw := .Values.auth.password -}}
{{- if not $pw -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "redis.fullname" .) -}}
{{- if and $existing $existing.data -}}
{{- $pw = get $existing.data "redis-password" | b64dec -}}
{{- end -}}
{{- end -}}
{{- if not $pw -}}
{{- $pw = randAlphaNum 32 -}}
{{- end -}}
{{- $_ := set .Values "__redisPassword" $pw -}}
{{- end -}}
{{- index .Values "__redisPassword" -}}
{{- end -}}
