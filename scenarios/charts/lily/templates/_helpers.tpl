{{/*
=============================================================================
Naming
=============================================================================
*/}}

{{/* lily-<release>-<environment>-<network>, or release.nameOverride. */}}
{{- define "lily.instanceName" -}}
{{- if and .Values.release .Values.release.nameOverride -}}
{{- .Values.release.nameOverride | lower -}}
{{- else -}}
{{- $env := required "release.environment is required" .Values.release.environment -}}
{{- $net := required "release.network is required" .Values.release.network -}}
{{- printf "%s-%s-%s-%s" .Chart.Name .Release.Name $env $net | lower -}}
{{- end -}}
{{- end -}}

{{/* The instance name cut to 32 characters; every object name starts with it. */}}
{{- define "lily.shortName" -}}
{{- include "lily.instanceName" . | trunc 32 | trimSuffix "-" -}}
{{- end -}}

{{/* Instance types rendered for the deployment type, as a JSON list. */}}
{{- define "lily.instanceTypes" -}}
{{- if eq .Values.deploymentType "cluster" -}}
["notifier","worker"]
{{- else if eq .Values.deploymentType "daemon" -}}
["daemon"]
{{- else -}}
{{- fail (printf "deploymentType must be \"daemon\" or \"cluster\", got %q" (toString .Values.deploymentType)) -}}
{{- end -}}
{{- end -}}

{{/*
Fills a context dict {root, type} in place with:
  name     <shortName>-<type> (the prefix of the type's objects)
  sts      the StatefulSet's name (<name>; <release>-lily before 0.1.0)
  tv       values of that instance type (.Values.daemon or .Values.cluster.<type>)
  storage  storage values (.Values.daemon.storage or .Values.cluster.storage)
Usage: {{- $ctx := dict "root" $ "type" "daemon" }}{{- include "lily.fillContext" $ctx }}
*/}}
{{- define "lily.fillContext" -}}
{{- $root := .root -}}
{{- $_ := set . "name" (printf "%s-%s" (include "lily.shortName" $root) .type) -}}
{{- /* The StatefulSet's own name: before 0.1.0 it was <release>-lily (the rename hazard). */ -}}
{{- if include "lily.atLeast" (list $root "0.1.0") -}}
{{- $_ := set . "sts" .name -}}
{{- else -}}
{{- $_ := set . "sts" (printf "%s-lily" $root.Release.Name) -}}
{{- end -}}
{{- if eq .type "daemon" -}}
{{- $_ := set . "tv" $root.Values.daemon -}}
{{- $_ := set . "storage" $root.Values.daemon.storage -}}
{{- else -}}
{{- $_ := set . "tv" (index $root.Values.cluster .type) -}}
{{- $_ := set . "storage" $root.Values.cluster.storage -}}
{{- end -}}
{{- end -}}

{{/*
=============================================================================
Chart-version gates
=============================================================================
"true" when the packaged chart version is >= the given version (pre-releases
of that version included). Usage: include "lily.atLeast" (list $root "0.2.0")
*/}}
{{- define "lily.atLeast" -}}
{{- $root := index . 0 -}}
{{- if semverCompare (printf ">=%s-0" (index . 1)) $root.Chart.Version -}}true{{- end -}}
{{- end -}}

{{/*
=============================================================================
Labels
=============================================================================
*/}}

{{/* Labels on everything of the release. */}}
{{- define "lily.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/part-of: "sentinel"
{{- /* The `release` values become labels as they are (network, environment, nameOverride). */}}
{{- range $k, $v := .Values.release }}
{{- if $v }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of one instance type (ctx). Same values as the real chart:
daemon   -> name "lily",          instance "<instanceName>"
notifier -> name "lily-notifier", instance "<shortName>-notifier" (same for worker)
*/}}
{{- define "lily.selectorLabels" -}}
{{- $root := .root -}}
{{- if eq .type "daemon" -}}
app.kubernetes.io/name: {{ $root.Chart.Name | quote }}
app.kubernetes.io/instance: {{ include "lily.instanceName" $root | trunc 63 | trimSuffix "-" | quote }}
{{- else -}}
app.kubernetes.io/name: {{ printf "%s-%s" $root.Chart.Name .type | quote }}
app.kubernetes.io/instance: {{ .name | quote }}
{{- end -}}
{{- end -}}

{{/* Selector + common labels of one instance type (ctx). */}}
{{- define "lily.labels" -}}
{{ include "lily.selectorLabels" . }}
{{ include "lily.commonLabels" .root }}
{{- end -}}

{{/*
=============================================================================
Misc
=============================================================================
*/}}

{{- define "lily.image" -}}
{{- $repo := required "image.repo is required" .Values.image.repo -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default (printf "v%s" .Chart.AppVersion)) -}}
{{- end -}}

{{/* Redis coordinates for cluster mode (defaults point at the subchart). */}}
{{- define "lily.redisAddr" -}}
{{- .Values.cluster.redis.host | default (printf "%s-redis-master:6379" .Release.Name) -}}
{{- end -}}

{{/* Env var holding the URL of one postgresql storage entry. */}}
{{- define "lily.storageUrlEnv" -}}
{{- $name := required "storage.postgresql[].name is required" .name -}}
{{- if not (regexMatch "^[A-Za-z0-9_]+$" $name) -}}
{{- fail (printf "storage.postgresql[].name %q: only [A-Za-z0-9_] allowed (it becomes part of an env var name)" $name) -}}
{{- end -}}
{{- printf "LILY_STORAGE_POSTGRESQL_%s_URL" ($name | upper) -}}
{{- end -}}

{{/*
=============================================================================
config.toml of one instance type (ctx)
=============================================================================
*/}}
{{- define "lily.configToml" -}}
{{- $root := .root -}}
{{- if .tv.configOverrideEnabled -}}
{{ .tv.configOverride }}
{{- else -}}
[API]
  ListenAddress = "/ip4/0.0.0.0/tcp/1234/http"
[Libp2p]
  ListenAddresses = ["/ip4/0.0.0.0/tcp/1347"]
  ConnMgrLow = 400
  ConnMgrHigh = 500
  ConnMgrGrace = "5m0s"
{{- with (dig "pubsub" "ipwhitelist" list .tv) }}
[Pubsub]
  IPColocationWhitelist = {{ . | toJson }}
{{- end }}
{{- if ne .type "daemon" }}
[Queue]
{{- if eq .type "notifier" }}
  [Queue.Notifiers]
    [Queue.Notifiers.{{ $root.Values.cluster.queue.notifier | default "Notifier1" }}]
      Network = "tcp"
      Addr = {{ include "lily.redisAddr" $root | quote }}
      Username = "default"
      PasswordEnv = "LILY_REDIS_PASSWORD"
      DB = 0
      PoolSize = 0
{{- else }}
  [Queue.Workers]
    [Queue.Workers.{{ $root.Values.cluster.queue.worker | default "Worker1" }}]
      [Queue.Workers.{{ $root.Values.cluster.queue.worker | default "Worker1" }}.RedisConfig]
        Network = "tcp"
        Addr = {{ include "lily.redisAddr" $root | quote }}
        Username = "default"
        PasswordEnv = "LILY_REDIS_PASSWORD"
        DB = 0
        PoolSize = 0
      [Queue.Workers.{{ $root.Values.cluster.queue.worker | default "Worker1" }}.WorkerConfig]
        Concurrency = 1
        LoggerLevel = "info"
        WatchQueuePriority = 5
        FillQueuePriority = 3
        IndexQueuePriority = 1
        WalkQueuePriority = 1
        StrictPriority = false
        ShutdownTimeout = 30000000000
{{- end }}
{{- end }}
{{- if or .storage.postgresql .storage.file }}
[Storage]
{{- end }}
{{- if .storage.postgresql }}
  [Storage.Postgresql]
{{- range .storage.postgresql }}
    [Storage.Postgresql.{{ .name }}]
      URLEnv = {{ include "lily.storageUrlEnv" . | quote }}
      SchemaName = {{ .schema | default "lily" | quote }}
      ApplicationName = {{ .applicationName | default (include "lily.instanceName" $root) | quote }}
      PoolSize = {{ .poolSize | default 20 | int }}
      AllowUpsert = {{ .allowUpsert | default false }}
{{- end }}
{{- end }}
{{- if .storage.file }}
  [Storage.File]
{{- range .storage.file }}
    [Storage.File.{{ .name }}]
      Format = {{ .format | default "CSV" | quote }}
      Path = {{ .path | default "/tmp" | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
=============================================================================
Environment shared by all containers of one instance type (ctx)
=============================================================================
*/}}
{{- define "lily.env" -}}
{{- $root := .root -}}
- name: GOLOG_LOG_FMT
  value: {{ $root.Values.logFormat | default "json" | quote }}
- name: GOLOG_LOG_LEVEL
  value: {{ $root.Values.logLevel | default "info" | quote }}
{{- with $root.Values.logLevelNamed }}
- name: LILY_LOG_LEVEL_NAMED
  value: {{ . | quote }}
{{- end }}
- name: LILY_REPO
  value: "/var/lib/lily"
- name: LILY_CONFIG
  value: "/var/lib/lily/config.toml"
{{- if ne .type "daemon" }}
- name: LILY_REDIS_ADDR
  value: {{ include "lily.redisAddr" $root | quote }}
- name: LILY_REDIS_DB
  value: "0"
- name: LILY_REDIS_USERNAME
  value: "default"
- name: LILY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.cluster.redis.secretName | default (printf "%s-redis" $root.Release.Name) | quote }}
      key: {{ $root.Values.cluster.redis.secretKey | default "redis-password" | quote }}
{{- end }}
{{- range .storage.postgresql }}
- name: {{ include "lily.storageUrlEnv" . }}
  valueFrom:
    secretKeyRef:
      name: {{ required "storage.postgresql[].secretName is required" .secretName | quote }}
      key: {{ .secretKey | default "url" | quote }}
{{- end }}
{{- with .tv.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
=============================================================================
Scheduling shared by all pods
=============================================================================
*/}}
{{- define "lily.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The same knobs as the chart before 0.1.0 rendered them (and the real chart still does):
the block starts on the line of `spec:` it is glued to, so a nodeSelector makes the pod
spec invalid YAML ("mapping values are not allowed in this context"); affinity and
tolerations start on a line of their own and render. Renders nothing without knobs. Reproduces the real chart's defect; never used from 0.1.0 on.
*/}}
{{- define "lily.schedulingGlued" -}}
{{- with .Values.nodeSelector -}}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}

{{/* Mounts of every Lily container (ctx). */}}
{{- define "lily.volumeMounts" -}}
- name: config-volume
  mountPath: /var/lib/lily/config.toml
  subPath: config.toml
  readOnly: true
- name: repo-volume
  mountPath: /var/lib/lily
- name: datastore-volume
  mountPath: /var/lib/lily/datastore
{{- end -}}

{{/* Resources of the init containers: the real chart's defaults for them. */}}
{{- define "lily.initResources" -}}
requests:
  cpu: "4000m"
  memory: "16Gi"
limits:
  cpu: "4000m"
  memory: "16Gi"
{{- end -}}
