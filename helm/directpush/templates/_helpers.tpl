{{- define "directpush.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "directpush.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "directpush.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "directpush.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "frontend") */}}
{{- define "directpush.selector" -}}
app.kubernetes.io/name: {{ include "directpush.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "directpush.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "directpush.secretName" -}}
{{ include "directpush.fullname" . }}
{{- end -}}

{{- define "directpush.databaseSecret" -}}
{{ .Values.database.existingSecret | default (include "directpush.secretName" .) }}
{{- end -}}

{{- define "directpush.ingestSecret" -}}
{{ .Values.watcher.existingIngestSecret | default (include "directpush.secretName" .) }}
{{- end -}}

{{- define "directpush.imapSecret" -}}
{{ .Values.watcher.existingImapSecret | default (include "directpush.secretName" .) }}
{{- end -}}

{{- define "directpush.jwtSecret" -}}
{{ .Values.frontend.auth.existingJwtSecret | default (include "directpush.secretName" .) }}
{{- end -}}

{{- define "directpush.natsSecret" -}}
{{ .Values.nats.existingSecret | default (include "directpush.secretName" .) }}
{{- end -}}

{{- define "directpush.redisSecret" -}}
{{ .Values.redis.existingSecret | default (include "directpush.secretName" .) }}
{{- end -}}

{{/* A bundled store's password: required, and safe in a URL as it stands. */}}
{{- define "directpush.storePassword" -}}
{{- $p := required (printf "bundled.%s.password is required with the bundled %s" .store .store) .password -}}
{{- if not (regexMatch "^[A-Za-z0-9._~-]+$" $p) -}}
{{- fail (printf "bundled.%s.password: use letters, digits, '.', '_', '~' and '-' only (it goes into a URL)" .store) -}}
{{- end -}}
{{- $p -}}
{{- end -}}

{{- define "directpush.natsUrl" -}}
{{- if .Values.bundled.nats.enabled -}}
nats://directpush:{{ include "directpush.storePassword" (dict "store" "nats" "password" .Values.bundled.nats.password) }}@nats:4222
{{- else -}}
{{ .Values.nats.url }}
{{- end -}}
{{- end -}}

{{- define "directpush.redisUrl" -}}
{{- if .Values.bundled.redis.enabled -}}
redis://:{{ include "directpush.storePassword" (dict "store" "redis" "password" .Values.bundled.redis.password) }}@redis:6379
{{- else -}}
{{ .Values.redis.url }}
{{- end -}}
{{- end -}}

{{/* Settings every service takes: stores, namespace, pod name, traces. */}}
{{- define "directpush.commonEnv" -}}
{{- if not (has .Values.redis.mode (list "single" "cluster")) }}
{{- fail "redis.mode must be single or cluster" }}
{{- end }}
{{- if and .Values.bundled.redis.enabled (eq .Values.redis.mode "cluster") }}
{{- fail "redis.mode=cluster needs your own Redis Cluster in redis.url: the bundled Redis is one server" }}
{{- end }}
- name: NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "directpush.natsSecret" . }}
      key: NATS_URL
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "directpush.redisSecret" . }}
      key: REDIS_URL
- name: REDIS_MODE
  value: {{ .Values.redis.mode | quote }}
- name: REDIS_WAIT_TIMEOUT_MS
  value: {{ .Values.redis.waitTimeoutMs | toString | quote }}
{{- if ne (toString .Values.redis.waitReplicas) "" }}
- name: REDIS_WAIT_REPLICAS
  value: {{ .Values.redis.waitReplicas | toString | quote }}
{{- end }}
- name: DP_NAMESPACE
  value: {{ .Values.namespace | quote }}
{{- if .Values.wakeSecret }}
- name: WAKE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "directpush.secretName" . }}
      key: WAKE_SECRET
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerArg | quote }}
{{- end }}
{{- end -}}

{{- define "directpush.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "directpush.databaseSecret" . }}
      key: DATABASE_URL
{{- end -}}

{{/* A settings map as env entries, in name order. */}}
{{- define "directpush.configEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}
