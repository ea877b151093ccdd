{{/*
breakwater's named templates: include them in a pod spec to inject breakwater.

  {{- include "breakwater.podServiceAccount" . | nindent 2 }}  # discovery: service account, token
  initContainers:
    {{- include "breakwater.initContainers" . | nindent 4 }}   # iptables step, native sidecar
  containers:
    - name: app
      env:
        {{- include "breakwater.appEnv" . | nindent 8 }}       # explicit mode: HTTP_PROXY
    {{- include "breakwater.sidecar" . | nindent 4 }}          # classic sidecar
  volumes:
    {{- include "breakwater.volumes" . | nindent 4 }}

and `targetPort: {{ include "breakwater.targetPort" . }}` in the Service. Each takes
the root context and reads breakwater's values from `.Values.breakwater` (this chart
as a dependency) or `.Values` (this chart installed itself), so switching `mode` or
`sidecar` needs no change to the including chart. A template with nothing to add
renders nothing. `breakwater inject` writes the same containers (the tests compare).
*/}}

{{- define "breakwater.initContainers" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- if and (eq $v.sidecar "native") (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "breakwater: sidecar: native needs Kubernetes 1.29 or later (native sidecar containers), this is %s: set sidecar: classic" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if eq $v.mode "transparent" -}}
{{ include "breakwater.iptablesContainer" $v }}
{{ end -}}
{{- if eq $v.sidecar "native" -}}
{{ include "breakwater.container" (dict "v" $v "native" true) }}
{{- end -}}
{{- end -}}

{{- define "breakwater.sidecar" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- if eq $v.sidecar "classic" -}}
{{ include "breakwater.container" (dict "v" $v "native" false) }}
{{- end -}}
{{- end -}}

{{- define "breakwater.volumes" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- if eq $v.mode "transparent" }}
# iptables takes its lock file in /run; the init container's root filesystem is read-only.
- name: breakwater-xtables
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- range $way := list "inbound" "outbound" }}
{{- with (index $v.tls $way).secretName }}
- name: breakwater-tls-{{ $way }}
  secret:
    secretName: {{ . }}
{{- end }}
{{- end }}
{{- with include "breakwater.policyConfigMap" (dict "v" $v "release" .Release.Name) }}
# The policy file's ConfigMap, the whole of it: mounted without subPath, so that the
# kubelet's updates reach the file (a subPath mount never sees them).
- name: breakwater-policy
  configMap:
    name: {{ . }}
{{- end -}}
{{- end -}}

{{/* Whether a policy file is set (policy.configMap or policy.inline): "true" or
nothing. Takes breakwater's values. */}}
{{- define "breakwater.policySet" -}}
{{- if and .policy.configMap .policy.inline -}}
{{- fail "breakwater: policy.configMap and policy.inline are both set: set one (inline makes its own ConfigMap)" -}}
{{- end -}}
{{- if or .policy.configMap .policy.inline }}true{{ end -}}
{{- end -}}

{{/* The name of the policy file's ConfigMap: policy.configMap, or the one the chart
makes of policy.inline (templates/policy-configmap.yaml); nothing when neither is
set. (dict "v" values "release" .Release.Name), which a parent chart and this one
share. */}}
{{- define "breakwater.policyConfigMap" -}}
{{- if include "breakwater.policySet" .v -}}
{{- if .v.policy.configMap -}}
{{- .v.policy.configMap -}}
{{- else -}}
{{- printf "%s-breakwater-policy" .release | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Explicit mode: the app's HTTP clients send to breakwater's outbound listener.
Both spellings: Go reads either, curl and many runtimes only the lowercase one. */}}
{{- define "breakwater.appEnv" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- if eq $v.mode "explicit" -}}
- name: HTTP_PROXY
  value: http://127.0.0.1:15001
- name: http_proxy
  value: http://127.0.0.1:15001
- name: NO_PROXY
  value: localhost,127.0.0.1,::1
- name: no_proxy
  value: localhost,127.0.0.1,::1
{{- end -}}
{{- end -}}

{{/* The Service's targetPort: breakwater's inbound listener in explicit mode; the
app's port in transparent mode, where iptables redirects it to breakwater. */}}
{{- define "breakwater.targetPort" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- if eq $v.mode "explicit" }}15006{{ else }}{{ $v.app.port | int64 }}{{ end -}}
{{- end -}}

{{/* --discovery kubernetes: "true" or nothing. Takes breakwater's values. */}}
{{- define "breakwater.discoveryOn" -}}
{{- if eq (toString .discovery.mode) "kubernetes" }}true{{ end -}}
{{- end -}}

{{/* The service account the pods run as, which discovery's RoleBindings name:
discovery.serviceAccount, else `default`, the account of a pod that names none. */}}
{{- define "breakwater.serviceAccountName" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- $v.discovery.serviceAccount | default "default" -}}
{{- end -}}

{{/* Pod spec fields, next to `containers:`: the service account discovery.serviceAccount
names, and with --discovery kubernetes its token mounted (the sidecar reads the API
with it, even where the account turns automounting off). Nothing otherwise. */}}
{{- define "breakwater.podServiceAccount" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
{{- $fields := list -}}
{{- with $v.discovery.serviceAccount }}{{ $fields = append $fields (printf "serviceAccountName: %s" .) }}{{ end -}}
{{- if include "breakwater.discoveryOn" $v }}{{ $fields = append $fields "automountServiceAccountToken: true" }}{{ end -}}
{{- join "\n" $fields -}}
{{- end -}}

{{/* Pod annotations: the mode, for tools (and for `breakwater inject` run over the
result, which then knows the proxy variables are its own). */}}
{{- define "breakwater.podAnnotations" -}}
{{- $v := .Values -}}
{{- if kindIs "map" .Values.breakwater }}{{ $v = .Values.breakwater }}{{ end -}}
breakwater.io/mode: {{ $v.mode }}
{{- end -}}

{{/* The breakwater container; (dict "v" values "native" bool). */}}
{{- define "breakwater.container" -}}
{{- $v := .v -}}
- name: breakwater
  image: {{ printf "%s:%s" $v.image.repository $v.image.tag | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy | default "IfNotPresent" }}
  {{- if .native }}
  # A native sidecar (Kubernetes 1.29+): an init container that keeps running. It
  # starts before the app's containers and is stopped after them.
  restartPolicy: Always
  {{- end }}
  args:
    {{- include "breakwater.runArgs" $v | nindent 4 }}
  {{- if $v.tracing.otlpEndpoint }}
  # The spans' resource, from the downward API (a missing label gives "").
  env:
    - name: BREAKWATER_POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: BREAKWATER_POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    {{- if not $v.tracing.serviceName }}
    - name: BREAKWATER_SERVICE_NAME
      valueFrom: {fieldRef: {fieldPath: "metadata.labels['app.kubernetes.io/name']"}}
    {{- end }}
  {{- end }}
  ports:
    - name: bw-admin
      containerPort: 15000
      protocol: TCP
    - name: bw-inbound
      containerPort: 15006
      protocol: TCP
  # The startup probe must be /live, never /ready. /ready includes the app's health,
  # and the app cannot be healthy before it starts, which for a native sidecar is
  # only once this probe has passed: a startup probe on /ready would deadlock the pod.
  startupProbe:
    httpGet:
      path: /live
      port: 15000
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /live
      port: 15000
    periodSeconds: 10
    failureThreshold: 3
  # /ready: listeners bound, app healthy, no drain started. breakwater applies the
  # app's health thresholds itself, so a single failure here is already a verdict.
  readinessProbe:
    httpGet:
      path: /ready
      port: 15000
    periodSeconds: 2
    failureThreshold: 1
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $v.proxyUid | int64 }}
    runAsGroup: {{ $v.proxyUid | int64 }}
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop:
        - ALL
    seccompProfile:
      type: RuntimeDefault
  {{- $policy := include "breakwater.policySet" $v }}
  {{- if or $v.tls.inbound.secretName $v.tls.outbound.secretName $policy }}
  volumeMounts:
    {{- range $way := list "inbound" "outbound" }}
    {{- if (index $v.tls $way).secretName }}
    - name: breakwater-tls-{{ $way }}
      mountPath: /etc/breakwater/tls/{{ $way }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if $policy }}
    # The directory, not the file with subPath: a subPath mount gets no ConfigMap updates.
    - name: breakwater-policy
      mountPath: /etc/breakwater/policy
      readOnly: true
    {{- end }}
  {{- end }}
{{- end -}}

{{/* The init container that redirects the pod's TCP to breakwater: the only part
that needs privileges (root in the pod's network namespace, NET_ADMIN, NET_RAW). */}}
{{- define "breakwater.iptablesContainer" -}}
- name: breakwater-init
  image: {{ printf "%s:%s" .initImage.repository .initImage.tag | quote }}
  imagePullPolicy: {{ .initImage.pullPolicy | default "IfNotPresent" }}
  args:
    - init-iptables
    - --inbound-port=15006
    - --outbound-port=15001
    - --admin-port=15000
    - {{ printf "--proxy-uid=%d" (.proxyUid | int64) | quote }}
    {{- with .transparent.excludeInboundPorts }}
    - {{ printf "--exclude-inbound-ports=%s" (join "," .) | quote }}
    {{- end }}
    {{- with .transparent.excludeOutboundPorts }}
    - {{ printf "--exclude-outbound-ports=%s" (join "," .) | quote }}
    {{- end }}
    {{- with .transparent.excludeOutboundCidrs }}
    - {{ printf "--exclude-outbound-cidrs=%s" (join "," .) | quote }}
    {{- end }}
  resources:
    {{- toYaml .transparent.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop:
        - ALL
      add:
        - NET_ADMIN
        - NET_RAW
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: breakwater-xtables
      mountPath: /run
{{- end -}}

{{/* `breakwater run` and its flags: each value that is set becomes one --flag=value. */}}
{{- define "breakwater.runArgs" -}}
- run
- --inbound-addr=0.0.0.0:15006
- --outbound-addr=127.0.0.1:15001
- --admin-addr=0.0.0.0:15000
- {{ printf "--app-addr=127.0.0.1:%d" (.app.port | int64) | quote }}
{{- include "breakwater.flag" (list "app-protocol" .app.protocol) }}
{{- $r := .resilience }}
{{- include "breakwater.flag" (list "timeout" $r.timeout) }}
{{- include "breakwater.flag" (list "connect-timeout" $r.connectTimeout) }}
{{- include "breakwater.flag" (list "per-try-timeout" $r.perTryTimeout) }}
{{- include "breakwater.flag" (list "retries" $r.retries) }}
{{- include "breakwater.flag" (list "retry-on" $r.retryOn) }}
{{- include "breakwater.flag" (list "retry-backoff" $r.retryBackoff) }}
{{- include "breakwater.flag" (list "retry-backoff-max" $r.retryBackoffMax) }}
{{- include "breakwater.flag" (list "retry-budget" $r.retryBudget) }}
{{- include "breakwater.flag" (list "retry-budget-min" $r.retryBudgetMin) }}
{{- include "breakwater.flag" (list "retry-body-limit" $r.retryBodyLimit) }}
{{- include "breakwater.flag" (list "retry-budget-mode" $r.retryBudgetMode) }}
{{- include "breakwater.flag" (list "hedge-after" $r.hedgeAfter) }}
{{- include "breakwater.flag" (list "hedge-budget" $r.hedgeBudget) }}
{{- $b := .breaker }}
{{- include "breakwater.flag" (list "breaker-consecutive-failures" $b.consecutiveFailures) }}
{{- include "breakwater.flag" (list "breaker-failure-rate" $b.failureRate) }}
{{- include "breakwater.flag" (list "breaker-window" $b.window) }}
{{- include "breakwater.flag" (list "breaker-min-requests" $b.minRequests) }}
{{- include "breakwater.flag" (list "breaker-open-duration" $b.openDuration) }}
{{- include "breakwater.flag" (list "breaker-half-open-requests" $b.halfOpenRequests) }}
{{- include "breakwater.flag" (list "breaker-slow-call" $b.slowCall) }}
{{- include "breakwater.flag" (list "breaker-slow-call-rate" $b.slowCallRate) }}
{{- include "breakwater.flag" (list "max-ejection-percent" $b.maxEjectionPercent) }}
{{- include "breakwater.flag" (list "breaker-mode" $b.mode) }}
{{- $k := .bulkhead }}
{{- include "breakwater.flag" (list "max-concurrent" $k.maxConcurrent) }}
{{- include "breakwater.flag" (list "max-concurrent-min" $k.maxConcurrentMin) }}
{{- include "breakwater.flag" (list "max-concurrent-max" $k.maxConcurrentMax) }}
{{- include "breakwater.flag" (list "max-queue" $k.maxQueue) }}
{{- include "breakwater.flag" (list "queue-timeout" $k.queueTimeout) }}
{{- include "breakwater.flag" (list "bulkhead-mode" $k.mode) }}
{{- include "breakwater.flag" (list "inbound-max-concurrent" .inbound.maxConcurrent) }}
{{- include "breakwater.flag" (list "inbound-max-queue" .inbound.maxQueue) }}
{{- include "breakwater.flag" (list "inbound-queue-timeout" .inbound.queueTimeout) }}
{{- $rl := .rateLimit }}
{{- include "breakwater.flag" (list "rate-limit" $rl.outbound) }}
{{- include "breakwater.flag" (list "inbound-rate-limit" $rl.inbound) }}
{{- include "breakwater.flag" (list "rate-limit-mode" $rl.mode) }}
{{- range $route := .routes }}
{{- include "breakwater.route" $route }}
{{- end }}
{{- if include "breakwater.policySet" . }}
- {{ printf "--policy-file=/etc/breakwater/policy/%s" .policy.file | quote }}
{{- end }}
{{- $h := .appHealth }}
{{- include "breakwater.flag" (list "app-health-path" $h.path) }}
{{- include "breakwater.flag" (list "app-health-interval" $h.interval) }}
{{- include "breakwater.flag" (list "app-health-timeout" $h.timeout) }}
{{- include "breakwater.flag" (list "app-health-healthy-threshold" $h.healthyThreshold) }}
{{- include "breakwater.flag" (list "app-health-unhealthy-threshold" $h.unhealthyThreshold) }}
{{- include "breakwater.flag" (list "drain-delay" .drain.delay) }}
{{- include "breakwater.flag" (list "drain-timeout" .drain.timeout) }}
{{- $l := .limits }}
{{- include "breakwater.flag" (list "max-request-header-bytes" $l.maxRequestHeaderBytes) }}
{{- include "breakwater.flag" (list "max-request-headers" $l.maxRequestHeaders) }}
{{- include "breakwater.flag" (list "max-uri-bytes" $l.maxUriBytes) }}
{{- include "breakwater.flag" (list "header-read-timeout" $l.headerReadTimeout) }}
{{- include "breakwater.flag" (list "idle-timeout" $l.idleTimeout) }}
{{- include "breakwater.flag" (list "stream-idle-timeout" $l.streamIdleTimeout) }}
{{- include "breakwater.flag" (list "max-connections" $l.maxConnections) }}
{{- include "breakwater.flag" (list "upstream-idle-timeout" .upstream.idleTimeout) }}
{{- include "breakwater.flag" (list "dns-ttl" .upstream.dnsTtl) }}
{{- include "breakwater.flag" (list "h2-connections-per-endpoint" .upstream.h2ConnectionsPerEndpoint) }}
{{- include "breakwater.flag" (list "upstream-max-connection-age" .upstream.maxConnectionAge) }}
{{- include "breakwater.flag" (list "slow-start" .upstream.slowStart) }}
{{- include "breakwater.flag" (list "destination-idle-timeout" .upstream.destinationIdleTimeout) }}
{{- include "breakwater.flag" (list "max-destinations" .upstream.maxDestinations) }}
{{- include "breakwater.flag" (list "otlp-endpoint" .tracing.otlpEndpoint) }}
{{- include "breakwater.flag" (list "trace-sample-ratio" .tracing.sampleRatio) }}
{{- include "breakwater.flag" (list "trace-errors" .tracing.errors) }}
{{- include "breakwater.flag" (list "service-name" .tracing.serviceName) }}
{{- if .tracing.otlpEndpoint }}
{{- /* From the downward API env of the container (breakwater.container). */}}
- --pod-name=$(BREAKWATER_POD_NAME)
- --pod-namespace=$(BREAKWATER_POD_NAMESPACE)
{{- end }}
{{- include "breakwater.flag" (list "discovery" .discovery.mode) }}
{{- include "breakwater.flag" (list "discovery-namespaces" .discovery.namespaces) }}
{{- include "breakwater.flag" (list "kubernetes-api" .discovery.kubernetesApi) }}
{{- include "breakwater.flag" (list "protocol-detect-timeout" .transparent.protocolDetectTimeout) }}
{{- with .tls.inbound }}
{{- if .secretName }}
- --inbound-tls-cert=/etc/breakwater/tls/inbound/tls.crt
- --inbound-tls-key=/etc/breakwater/tls/inbound/tls.key
{{- if .clientCa }}
- --inbound-tls-client-ca=/etc/breakwater/tls/inbound/ca.crt
{{- end }}
{{- end }}
{{- include "breakwater.flag" (list "inbound-tls-identity-header" .identityHeader) }}
{{- end }}
{{- with .tls.outbound }}
{{- if and .secretName .ca }}
- --outbound-tls-ca=/etc/breakwater/tls/outbound/ca.crt
{{- end }}
{{- if and .secretName .clientCert }}
- --outbound-tls-cert=/etc/breakwater/tls/outbound/tls.crt
- --outbound-tls-key=/etc/breakwater/tls/outbound/tls.key
{{- end }}
{{- end }}
{{- include "breakwater.flag" (list "log-format" .logging.format) }}
{{- include "breakwater.flag" (list "log-level" .logging.level) }}
{{- include "breakwater.flag" (list "access-log" .logging.accessLog) }}
{{- include "breakwater.flag" (list "metrics-max-destinations" .metrics.maxDestinations) }}
{{- include "breakwater.flag" (list "metrics-max-endpoints" .metrics.maxEndpoints) }}
{{- include "breakwater.flag" (list "threads" .threads) }}
{{- range .extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* One flag, (list name value): nothing for null or false, --name for true, a
comma list for a list, whole numbers without a decimal point. */}}
{{- define "breakwater.flag" -}}
{{- $name := index . 0 -}}
{{- $value := index . 1 -}}
{{- if kindIs "bool" $value -}}
{{- if $value }}
- --{{ $name }}
{{- end -}}
{{- else if kindIs "slice" $value -}}
{{- if $value }}
- {{ printf "--%s=%s" $name (join "," $value) | quote }}
{{- end -}}
{{- else if not (kindIs "invalid" $value) }}
- {{ printf "--%s=%s" $name (include "breakwater.scalar" $value) | quote }}
{{- end -}}
{{- end -}}

{{/* A value as a flag takes it: numbers from values files arrive as floats. */}}
{{- define "breakwater.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* One --route from a route's camelCase keys: HOST[:PORT] (host absent or "*":
any host), then key=value for each key that is set (the route keys of `breakwater
run --route`, kebab-case; the README's "Policy keys" table); headers, a list of
{name, value}, give one header=NAME[:VALUE] each; retry-on conditions are joined
by '+'. A key that does not apply to the route's direction fails, naming it. */}}
{{- define "breakwater.route" -}}
{{- $route := . -}}
{{- $host := toString ($route.host | default "*") -}}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}{{ $host = printf "[%s]" $host }}{{ end -}}
{{- if not (kindIs "invalid" $route.port) }}{{ $host = printf "%s:%s" $host (include "breakwater.scalar" $route.port) }}{{ end -}}
{{- $parts := list $host -}}
{{- $direction := toString ($route.direction | default "outbound") -}}
{{- range $key := list "name" "direction" "path" "pathPrefix" "method" -}}
{{- $value := index $route $key -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $parts = append $parts (printf "%s=%s" (kebabcase $key) (include "breakwater.scalar" $value)) -}}
{{- end -}}
{{- end -}}
{{- range $route.headers -}}
{{- if kindIs "invalid" .value -}}
{{- $parts = append $parts (printf "header=%s" .name) -}}
{{- else -}}
{{- $parts = append $parts (printf "header=%s:%s" .name (include "breakwater.scalar" .value)) -}}
{{- end -}}
{{- end -}}
{{- /* Policy keys by the listener they apply to; "both" keys apply to either. */ -}}
{{- $keys := dict
  "both" (list "timeout" "connectTimeout" "bulkheadMode" "rateLimitKey" "rateLimitMode" "faultAbort" "faultDelay")
  "outbound" (list "protocol" "tls" "retries" "retryOn" "retryBackoff" "retryBackoffMax" "perTryTimeout" "retryBudget" "retryBudgetMin" "retryBodyLimit" "retryBudgetMode" "hedgeAfter" "hedgeBudget" "breakerConsecutiveFailures" "breakerFailureRate" "breakerWindow" "breakerMinRequests" "breakerOpenDuration" "breakerHalfOpenRequests" "breakerSlowCall" "breakerSlowCallRate" "maxEjectionPercent" "breakerMode" "maxConcurrent" "maxConcurrentMin" "maxConcurrentMax" "maxQueue" "queueTimeout" "rateLimit" "to" "keepHost" "split" "splitKey" "mirror" "mirrorUnsafe")
  "inbound" (list "inboundMaxConcurrent" "inboundMaxQueue" "inboundQueueTimeout" "inboundRateLimit") -}}
{{- range $applies := list "both" "outbound" "inbound" -}}
{{- range $key := index $keys $applies -}}
{{- $value := index $route $key -}}
{{- if not (kindIs "invalid" $value) -}}
{{- if and (ne $applies "both") (ne $applies $direction) -}}
{{- fail (printf "breakwater: routes: %s applies to %s routes only, and this route (%s) is %s" $key $applies (index $parts 0) $direction) -}}
{{- end -}}
{{- if kindIs "slice" $value -}}
{{- $value = join "+" $value -}}
{{- else -}}
{{- $value = include "breakwater.scalar" $value | replace "," "+" | nospace -}}
{{- end -}}
{{- $parts = append $parts (printf "%s=%s" (kebabcase $key) $value) -}}
{{- end -}}
{{- end -}}
{{- end }}
- {{ printf "--route=%s" (join "," $parts) | quote }}
{{- end -}}

{{/* `breakwater injector`'s args: the webhook's own, then inject's (the pod's form
and images), then the sidecar's run flags as breakwater.runArgs renders them, less
those inject sets per pod, then injector.runFlags. Takes breakwater's values. */}}
{{- define "breakwater.injectorArgs" -}}
- injector
- --listen-addr=0.0.0.0:8443
- --admin-addr=0.0.0.0:9090
- --tls-cert=/etc/breakwater/injector-tls/tls.crt
- --tls-key=/etc/breakwater/injector-tls/tls.key
- {{ printf "--log-format=%s" (.logging.format | default "json") | quote }}
- {{ printf "--mode=%s" .mode | quote }}
- {{ printf "--sidecar=%s" .sidecar | quote }}
- {{ printf "--image=%s:%s" .image.repository .image.tag | quote }}
- {{ printf "--init-image=%s:%s" .initImage.repository .initImage.tag | quote }}
- {{ printf "--proxy-uid=%d" (.proxyUid | int64) | quote }}
{{- with .transparent.excludeInboundPorts }}
- {{ printf "--exclude-inbound-ports=%s" (join "," .) | quote }}
{{- end }}
{{- with .transparent.excludeOutboundPorts }}
- {{ printf "--exclude-outbound-ports=%s" (join "," .) | quote }}
{{- end }}
{{- with .transparent.excludeOutboundCidrs }}
- {{ printf "--exclude-outbound-cidrs=%s" (join "," .) | quote }}
{{- end }}
{{- with .policy.configMap }}
- {{ printf "--policy-configmap=%s" . | quote }}
- {{ printf "--policy-configmap-key=%s" ($.policy.file | default "policy.yaml") | quote }}
{{- end }}
{{- $perPod := list "--inbound-addr=" "--outbound-addr=" "--admin-addr=" "--app-addr=" "--policy-file=" }}
{{- range $arg := include "breakwater.runArgs" . | fromYamlArray }}
{{- $skip := eq (toString $arg) "run" }}
{{- range $perPod }}{{ if hasPrefix . (toString $arg) }}{{ $skip = true }}{{ end }}{{ end }}
{{- if not $skip }}
- {{ toString $arg | quote }}
{{- end }}
{{- end }}
{{- range .injector.runFlags }}
- {{ . | quote }}
{{- end }}
{{- end -}}
