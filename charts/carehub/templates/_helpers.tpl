{{/*
Shared helpers. Every per-service object comes from a `carehub.service.*` helper taking
(dict "root" $ "name" "<service>"), so a service's template file is a list of includes.
Object names are fixed (carehub-<service>): Vault's Kubernetes auth role is bound to the
ServiceAccount carehub-<service>, so one release per namespace.
*/}}

{{- define "carehub.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "carehub.fullname" -}}
carehub-{{ .name }}
{{- end }}

{{/* The service's values: serviceDefaults overlaid with its own block. */}}
{{- define "carehub.values" -}}
{{- $own := index .root.Values.services .name | default dict -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy $own)) -}}
{{- end }}

{{- define "carehub.selectorLabels" -}}
app.kubernetes.io/name: carehub
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "carehub.labels" -}}
{{ include "carehub.selectorLabels" . }}
app.kubernetes.io/part-of: carehub
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "carehub.chart" .root }}
{{- end }}

{{- define "carehub.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Services enabled in values, sorted, as a YAML list. */}}
{{- define "carehub.enabledServices" -}}
{{- $out := list -}}
{{- range $name, $svc := .Values.services -}}
{{- if (kindIs "map" $svc) -}}{{- if (hasKey $svc "enabled" | ternary $svc.enabled true) -}}
{{- $out = append $out $name -}}
{{- end -}}{{- end -}}
{{- end -}}
{{- toYaml (sortAlpha $out) -}}
{{- end }}

{{/* The gRPC endpoint of service .name inside the release: its Service, on the chart's gRPC
port. Clients check the bare name on the peer's certificate (outbox targets' server_name). */}}
{{- define "carehub.endpoint" -}}
{{- printf "https://carehub-%s:%d" .name (int .root.Values.ports.grpc) -}}
{{- end }}

{{/*
The services .name reaches, sorted, as a YAML list: its `calls`, and its `outboxTargets` that
are enabled in this release (the outbox delivers to them; rows for a target not deployed stay
pending until it is, so a disabled target is no error). The NetworkPolicies open exactly these
edges, both ways.
*/}}
{{- define "carehub.callees" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $enabled := include "carehub.enabledServices" .root | fromYamlArray -}}
{{- $out := $svc.calls | default list -}}
{{- range $t := $svc.outboxTargets | default list -}}
{{- if and (has $t $enabled) (not (has $t $out)) -}}{{- $out = append $out $t -}}{{- end -}}
{{- end -}}
{{- toYaml (sortAlpha $out) -}}
{{- end }}

{{- define "carehub.vaultUsed" -}}
{{- if or (eq .Values.keys.provider "vault") (eq .Values.tls.source "vaultPki") -}}true{{- end -}}
{{- end }}

{{/* Fails the render with a message naming the setting (for rules JSON Schema cannot say well). */}}
{{- define "carehub.require" -}}
{{- if not .value -}}{{- fail (printf "carehub: %s is required %s" .key .why) -}}{{- end -}}
{{- end }}

{{- define "carehub.checkValues" -}}
{{- if include "carehub.vaultUsed" . -}}
{{- include "carehub.require" (dict "key" "vault.addr" "value" .Values.vault.addr "why" "(keys.provider=vault or tls.source=vaultPki)") -}}
{{- end -}}
{{- if eq .Values.keys.provider "file" -}}
{{- include "carehub.require" (dict "key" "keys.fileSecret" "value" .Values.keys.fileSecret "why" "(keys.provider=file)") -}}
{{- if .Values.keys.production -}}{{- fail "carehub: keys.provider=file refuses to start with keys.production=true; use Vault in production" -}}{{- end -}}
{{- end -}}
{{- if and (eq .Values.vault.auth.method "approle") (include "carehub.vaultUsed" .) -}}
{{- range $name := include "carehub.enabledServices" . | fromYamlArray -}}
{{- include "carehub.require" (dict "key" (printf "vault.auth.approle.roleIds.%s" $name) "value" (index $.Values.vault.auth.approle.roleIds $name) "why" "(vault.auth.method=approle)") -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.vault.auth.method "token") (include "carehub.vaultUsed" .) -}}
{{- include "carehub.require" (dict "key" "vault.auth.token.secret" "value" .Values.vault.auth.token.secret "why" "(vault.auth.method=token)") -}}
{{- end -}}
{{- $enabled := include "carehub.enabledServices" . | fromYamlArray -}}
{{- range $name := $enabled -}}
{{- include "carehub.checkDatabaseSecrets" (dict "root" $ "name" $name) -}}
{{- $svc := include "carehub.values" (dict "root" $ "name" $name) | fromYaml -}}
{{- range $callee := $svc.calls | default list -}}
{{- if not (has $callee $enabled) -}}
{{- fail (printf "carehub: services.%s.calls names %s, which is not enabled in this release (services.%s): %s would run without a service it calls (for identity: server.auth.identity_endpoint, carehub-identity, would not exist)" $name $callee $callee $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* feedBaseUrl is scheduling's (its calendar feeds' public address), nobody else's. */ -}}
{{- if hasKey (.Values.serviceDefaults | default dict) "feedBaseUrl" -}}
{{- fail "carehub: serviceDefaults.feedBaseUrl is not a default of every service: set services.scheduling.feedBaseUrl (the public base of scheduling's calendar feed URLs)" -}}
{{- end -}}
{{- range $name, $own := .Values.services -}}
{{- if and (kindIs "map" $own) (ne $name "scheduling") (hasKey $own "feedBaseUrl") -}}
{{- fail (printf "carehub: services.%s.feedBaseUrl is scheduling's setting (the public base of its calendar feed URLs), not %s's" $name $name) -}}
{{- end -}}
{{- end -}}
{{- if has "scheduling" $enabled -}}
{{- $sched := include "carehub.values" (dict "root" $ "name" "scheduling") | fromYaml -}}
{{- if not (or $sched.feedBaseUrl (hasKey ($sched.settings | default dict) "feed_base_url")) -}}
{{- fail "carehub: services.scheduling.feedBaseUrl is required: the public base of calendar feed URLs (<feedBaseUrl>/calendar/<token>.ics), the address clients reach the gateway at; without it scheduling would hand out feed links to 127.0.0.1" -}}
{{- end -}}
{{- end -}}
{{- /* processor and webhook are billing's (its payment processor), nobody else's. */ -}}
{{- range $key := list "processor" "webhook" -}}
{{- if hasKey ($.Values.serviceDefaults | default dict) $key -}}
{{- fail (printf "carehub: serviceDefaults.%s is not a default of every service: set services.billing.%s (billing's payment processor)" $key $key) -}}
{{- end -}}
{{- range $name, $own := $.Values.services -}}
{{- if and (kindIs "map" $own) (ne $name "billing") (hasKey $own $key) -}}
{{- fail (printf "carehub: services.%s.%s is billing's setting (its payment processor), not %s's" $name $key $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (has "billing" $enabled) (include "carehub.billing.stripe" (dict "root" $ "name" "billing")) -}}
{{- $billing := include "carehub.settings" (dict "root" $ "name" "billing") | fromYaml -}}
{{- if not (include "carehub.vaultUsed" $) -}}
{{- fail "carehub: services.billing.processor.kind=stripe reads the processor's secret key and webhook signing secret from Vault (services.billing.processor.vaultPath), but this release uses no Vault: set keys.provider=vault (or tls.source=vaultPki) and vault.*" -}}
{{- end -}}
{{- if not ($billing.processor.vault_path) -}}
{{- fail "carehub: services.billing.processor.vaultPath is required with processor.kind=stripe: the Vault KV path holding secret_key and webhook_secret (default carehub/billing/processor); secrets never go into values" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tests.enabled (ne .Values.tls.source "certManager") -}}
{{- include "carehub.require" (dict "key" "tests.tlsSecret" "value" .Values.tests.tlsSecret "why" "when tests.enabled and tls.source is not certManager (the helm-test client certificate)") -}}
{{- end -}}
{{- end }}

{{/*
Minimal TOML writer for the service configuration: (dict "path" "server" "table" $map).
Scalars and arrays of scalars first, then sub-tables. Integral numbers are written as
integers (Helm reads every YAML number as a float; the service's u64 keys need integers).
*/}}
{{- define "carehub.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{ include "carehub.tomlValue" $e }}{{- end -}}]
{{- else -}}{{- fail (printf "carehub: cannot write %v (%s) as a TOML value" $v (kindOf $v)) -}}
{{- end -}}
{{- end }}

{{- define "carehub.tomlTable" -}}
{{- $path := .path -}}
{{- $table := .table -}}
[{{ $path }}]
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "carehub.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if kindIs "map" $v }}

{{ include "carehub.tomlTable" (dict "path" (printf "%s.%s" $path $k) "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Mount points inside the container. */}}
{{- define "carehub.paths" -}}
config: /etc/carehub/config.toml
tls: /etc/carehub/tls
vaultCa: /etc/carehub/vault-ca/ca.crt
vaultToken: /var/run/secrets/carehub/vault/token
approleSecretId: /etc/carehub/approle/secret-id
keysFile: /etc/carehub/keys/keys.json
{{- end }}

{{/* Pod Security "restricted": the same contexts for every pod the chart makes. */}}
{{- define "carehub.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "carehub.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
