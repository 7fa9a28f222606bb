{{/*
StatefulSet of one instance type. Argument: context dict (see lily.fillContext).
*/}}
{{- define "lily.statefulset" -}}
{{- $root := .root -}}
{{- $ctx := . -}}
{{- $datastore := .tv.volumes.datastore -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .name | quote }}
  labels:
    {{- include "lily.labels" . | nindent 4 }}
spec:
  {{- if eq .type "notifier" }}
  replicas: 1
  {{- else }}
  replicas: {{ $root.Values.replicaCount | default 1 | int }}
  {{- end }}
  serviceName: {{ printf "%s-api-svc" .name | quote }}
  podManagementPolicy: {{ $root.Values.podManagementPolicy | default "Parallel" | quote }}
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels:
      {{- include "lily.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "lily.labels" . | nindent 8 }}
      annotations:
        checksum/config: {{ include "lily.configToml" . | sha256sum | quote }}
        checksum/secret: {{ include "lily.apiToken" $root | sha256sum | quote }}
    spec:
      {{- with include "lily.scheduling" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      terminationGracePeriodSeconds: 60
      initContainers:
        - name: init-datastore
          image: {{ include "lily.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy | default "IfNotPresent" | quote }}
          command: ["/bin/sh", "-c"]
          args:
            - |
              set -e
              mkdir -p /var/lib/lily/datastore /var/lib/lily/keystore
              chmod 0700 /var/lib/lily/keystore
              {{- if $root.Values.importSnapshot.enabled }}
              if [ -f /var/lib/lily/datastore/_imported ]; then
                echo "snapshot already imported"
                exit 0
              fi
              echo "importing snapshot {{ $root.Values.importSnapshot.url }}"
              lily init --import-snapshot={{ required "importSnapshot.url is required when importSnapshot.enabled" $root.Values.importSnapshot.url | quote }}
              touch /var/lib/lily/datastore/_imported
              {{- end }}
          env:
            {{- include "lily.env" . | nindent 12 }}
          volumeMounts:
            {{- include "lily.volumeMounts" . | nindent 12 }}
          resources:
            requests:
              cpu: "1000m"
              memory: "1Gi"
            limits:
              cpu: "1000m"
              memory: "1Gi"
        {{- if .storage.postgresql }}
        - name: init-database
          image: {{ include "lily.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy | default "IfNotPresent" | quote }}
          command: ["/bin/sh", "-c"]
          args:
            - |
              set -e
              {{- range .storage.postgresql }}
              echo "migrating schema {{ .schema | default "lily" }} of storage {{ .name }}"
              LILY_DB="${{ include "lily.storageUrlEnv" . }}" lily migrate --schema {{ .schema | default "lily" | quote }}
              {{- end }}
          env:
            {{- include "lily.env" . | nindent 12 }}
          volumeMounts:
            {{- include "lily.volumeMounts" . | nindent 12 }}
          resources:
            requests:
              cpu: "1000m"
              memory: "1Gi"
            limits:
              cpu: "1000m"
              memory: "1Gi"
        {{- end }}
      containers:
        - name: daemon
          image: {{ include "lily.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy | default "IfNotPresent" | quote }}
          command: ["lily"]
          args:
            - "daemon"
            {{- range .tv.args }}
            - {{ . | quote }}
            {{- end }}
            {{- if $root.Values.debug.disableNetworkSync }}
            - "--bootstrap=false"
            {{- end }}
          env:
            {{- include "lily.env" . | nindent 12 }}
            {{- if include "lily.atLeast" (list $root "0.2.0") }}
            {{- /* chart >= 0.2.0: compatible pod-template change */}}
            - name: GOMAXPROCS
              valueFrom:
                resourceFieldRef:
                  containerName: daemon
                  resource: limits.cpu
                  divisor: "1"
            {{- end }}
          ports:
            - name: api
              containerPort: 1234
            - name: p2p
              containerPort: 1347
            {{- if $root.Values.prometheusOperatorServiceMonitor }}
            - name: metrics
              containerPort: 9991
            {{- end }}
          volumeMounts:
            {{- include "lily.volumeMounts" . | nindent 12 }}
          {{- with .tv.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
      volumes:
        - name: config-volume
          configMap:
            name: {{ printf "%s-config" .name | quote }}
        {{- if not $datastore.enabled }}
        - name: datastore-volume
          emptyDir: {}
        {{- end }}
  {{- if $datastore.enabled }}
  volumeClaimTemplates:
    - metadata:
        name: datastore-volume
        {{- if include "lily.atLeast" (list $root "0.3.0") }}
        {{- /* chart >= 0.3.0: claim template labels (immutable field!) */}}
        labels:
          {{- include "lily.selectorLabels" $ctx | nindent 10 }}
        {{- end }}
      spec:
        accessModes:
          {{- toYaml ($datastore.accessModes | default (list "ReadWriteOnce")) | nindent 10 }}
        {{- if $datastore.storageClassName }}
        storageClassName: {{ $datastore.storageClassName | quote }}
        {{- end }}
        volumeMode: Filesystem
        resources:
          requests:
            storage: {{ required "volumes.datastore.size is required" $datastore.size | quote }}
  {{- end }}
{{- end -}}

{{- define "lily.volumeMounts" -}}
- name: datastore-volume
  mountPath: /var/lib/lily
- name: config-volume
  mountPath: /etc/lily
  readOnly: true
{{- end -}}
