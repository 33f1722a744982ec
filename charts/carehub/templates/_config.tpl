{{/*
The service's TOML configuration (mounted at /etc/carehub/config.toml). Key names are the
binary's (services/platform/src/config.rs and the fixed [server.keys] / [server.vault] /
[server.tls] / [server.audit] names); secrets never appear here: the database URL comes from
its Secret as CAREHUB_SERVER__DATABASE__URL, Vault credentials from mounted files.
*/}}
{{/*
server.auth.identity_endpoint of every service but identity: they verify identity's tokens
(records also looks users up there) through identity's Service; the client checks the bare
name "identity" on its certificate. records refuses a configuration without it, also in
`carehub migrate records` (the migration Job sets it too); carehub.checkValues refuses a
release whose services call a disabled identity.
*/}}
{{- define "carehub.identityEndpoint" -}}
{{- printf "https://carehub-identity:%d" (int .Values.ports.grpc) -}}
{{- end }}

{{/*
Settings of a service's own table that the chart derives from the call graph, so that they
cannot disagree with the NetworkPolicies: messaging's records_endpoint (care teams) when it
calls records; records' audit_sources (the trails the patient's access log merges beside its
own and identity's) from the services other than identity that records calls. And the ones the
chart takes from values of its own: scheduling's feed_base_url (services.scheduling.feedBaseUrl,
the public address the gateway routes /calendar/ at); billing's processor.kind and, for Stripe,
processor.vault_path (services.billing.processor: the KV path its secret key and webhook signing
secret are read from; the secrets themselves never appear here).
*/}}
{{- define "carehub.wiredSettings" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $calls := $svc.calls | default list -}}
{{- $out := dict -}}
{{- if and (eq .name "messaging") (has "records" $calls) -}}
{{- $_ := set $out "records_endpoint" (include "carehub.endpoint" (dict "root" .root "name" "records")) -}}
{{- end -}}
{{- if and (eq .name "scheduling") $svc.feedBaseUrl -}}
{{- $_ := set $out "feed_base_url" $svc.feedBaseUrl -}}
{{- end -}}
{{- if eq .name "billing" -}}
{{- $proc := $svc.processor | default dict -}}
{{- $p := dict "kind" ($proc.kind | default "sandbox") -}}
{{- /* A processor.kind in `settings` wins (carehub.settings): the Vault path follows it. */ -}}
{{- $kind := (($svc.settings | default dict).processor | default dict).kind | default $p.kind -}}
{{- if and (eq $kind "stripe") $proc.vaultPath -}}
{{- $_ := set $p "vault_path" $proc.vaultPath -}}
{{- end -}}
{{- $_ := set $out "processor" $p -}}
{{- end -}}
{{- if eq .name "records" -}}
{{- $sources := dict -}}
{{- range $s := $calls -}}
{{- if ne $s "identity" -}}{{- $_ := set $sources $s (include "carehub.endpoint" (dict "root" $.root "name" $s)) -}}{{- end -}}
{{- end -}}
{{- if $sources -}}{{- $_ := set $out "audit_sources" $sources -}}{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end }}

{{/* "true" when billing (.name) talks to Stripe, as its rendered configuration says (a
processor.kind in `settings` wins like any setting): its secrets come from Vault, its pods need
egress to the processor, and the processor's webhook callers reach its admin port. */}}
{{- define "carehub.billing.stripe" -}}
{{- if eq .name "billing" -}}
{{- $settings := include "carehub.settings" . | fromYaml -}}
{{- if eq (($settings.processor | default dict).kind | default "sandbox") "stripe" -}}true{{- end -}}
{{- end -}}
{{- end }}

{{/* The service's own table: the wired settings, with what `settings` says winning key by key. */}}
{{- define "carehub.settings" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- toYaml (mergeOverwrite (include "carehub.wiredSettings" . | fromYaml) (deepCopy ($svc.settings | default dict))) -}}
{{- end }}

{{/*
[server.outbox.targets]: the service's outboxTargets enabled in this release, each reached at
its Service with the bare name its certificate carries.
*/}}
{{- define "carehub.outboxTargets" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $enabled := include "carehub.enabledServices" .root | fromYamlArray -}}
{{- $targets := dict -}}
{{- range $t := $svc.outboxTargets | default list -}}
{{- if has $t $enabled -}}
{{- $_ := set $targets $t (dict "endpoint" (include "carehub.endpoint" (dict "root" $.root "name" $t)) "server_name" $t) -}}
{{- end -}}
{{- end -}}
{{- toYaml $targets -}}
{{- end }}

{{- define "carehub.service.configToml" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $paths := include "carehub.paths" . | fromYaml -}}
{{- $v := $root.Values -}}
{{- $tls := dict "trust_domain" $v.trustDomain "reload_interval_secs" $v.tls.reloadIntervalSecs -}}
{{- if eq $v.tls.source "vaultPki" -}}
{{- $_ := set $tls "source" "vault_pki" -}}
{{- $_ := set $tls "pki_role" (printf "carehub-%s" $name) -}}
{{- $_ := set $tls "pki_ttl_secs" $v.tls.vaultPki.ttlSecs -}}
{{- else -}}
{{- $_ := set $tls "source" "files" -}}
{{- $_ := set $tls "cert_file" (printf "%s/tls.crt" $paths.tls) -}}
{{- $_ := set $tls "key_file" (printf "%s/tls.key" $paths.tls) -}}
{{- $_ := set $tls "ca_file" (printf "%s/ca.crt" $paths.tls) -}}
{{- end -}}
{{- $telemetry := dict "sample_ratio" $v.telemetry.sampleRatio "log_format" $v.telemetry.logFormat "log_filter" $v.telemetry.logFilter -}}
{{- if $v.telemetry.otlpEndpoint -}}{{- $_ := set $telemetry "otlp_endpoint" $v.telemetry.otlpEndpoint -}}{{- end -}}
{{- $auth := dict "issuer" $v.auth.issuer "audience" $v.auth.audience "gateway_workloads" $v.auth.gatewayWorkloads -}}
{{- if ne $name "identity" -}}
{{- $_ := set $auth "identity_endpoint" (include "carehub.identityEndpoint" $root) -}}
{{- end -}}
{{- $keys := dict "provider" $v.keys.provider "production" $v.keys.production "refresh_interval_secs" $v.keys.refreshIntervalSecs "max_staleness_secs" $v.keys.maxStalenessSecs -}}
{{- if eq $v.keys.provider "file" -}}{{- $_ := set $keys "file" $paths.keysFile -}}{{- end -}}
{{- $server := dict
  "listen" (printf "0.0.0.0:%d" (int $v.ports.grpc))
  "admin_listen" (printf "0.0.0.0:%d" (int $v.ports.admin))
  "tls" $tls
  "database" (dict "max_connections" $svc.database.maxConnections "min_connections" ($svc.database.minConnections | default $svc.database.maxConnections) "migrate_on_start" false)
  "telemetry" $telemetry
  "limits" (dict "drain_timeout_secs" $svc.drainTimeoutSecs)
  "auth" $auth
  "keys" $keys
  "audit" (dict "sink" $v.audit.sink "checkpoint_every" $v.audit.checkpointEvery)
-}}
{{- if include "carehub.vaultUsed" $root -}}
{{- $method := $v.vault.auth.method -}}
{{- $vauth := dict "method" $method "mount" ($v.vault.auth.mount | default $method) -}}
{{- if eq $method "kubernetes" -}}
{{- $_ := set $vauth "role" (printf "carehub-%s" $name) -}}
{{- $_ := set $vauth "jwt_file" $paths.vaultToken -}}
{{- else if eq $method "approle" -}}
{{- $_ := set $vauth "role_id" (index $v.vault.auth.approle.roleIds $name) -}}
{{- $_ := set $vauth "secret_id_file" $paths.approleSecretId -}}
{{- end -}}
{{- $vault := dict "addr" $v.vault.addr "kv_mount" $v.vault.kvMount "kv_version" $v.vault.kvVersion "pki_mount" $v.vault.pkiMount "auth" $vauth -}}
{{- if $v.vault.caSecret -}}{{- $_ := set $vault "ca_file" $paths.vaultCa -}}{{- end -}}
{{- if $v.vault.namespace -}}{{- $_ := set $vault "namespace" $v.vault.namespace -}}{{- end -}}
{{- $_ := set $server "vault" $vault -}}
{{- end -}}
{{- $targets := include "carehub.outboxTargets" . | fromYaml -}}
{{- if $targets -}}{{- $_ := set $server "outbox" (dict "targets" $targets) -}}{{- end -}}
{{- $server = mergeOverwrite $server (deepCopy ($svc.server | default dict)) -}}
{{- $settings := include "carehub.settings" . | fromYaml -}}
# carehub {{ $name }}: rendered by the Helm chart; edit values, not this file.
{{ include "carehub.tomlTable" (dict "path" "server" "table" $server) }}
{{- if $settings }}

{{ include "carehub.tomlTable" (dict "path" $name "table" $settings) }}
{{- end }}
{{- end }}

{{- define "carehub.service.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
data:
  config.toml: |
    {{- include "carehub.service.configToml" . | nindent 4 }}
{{- end }}
