{{/*
NetworkPolicy of a service: ingress only from its callers (the services whose `calls` or enabled
`outboxTargets` name it: carehub.callees), the gateway on its gatewayPorts, the helm-test pods,
and metrics scrapers on the admin port; egress only to the services it calls or delivers its
outbox to, DNS, Postgres, Vault and OTLP. Billing with processor.kind=stripe also admits the
processor's webhook callers (webhook.from, default the gateway) on its admin port and reaches the
processor's API (processor.egress, HTTPS). Kubelet probes come from the node, which NetworkPolicy implementations let through.
*/}}
{{- define "carehub.service.networkpolicy" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $v := $root.Values -}}
{{- if $v.networkPolicy.enabled }}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $callers := list -}}
{{- range $other := include "carehub.enabledServices" $root | fromYamlArray -}}
{{- $theirs := include "carehub.callees" (dict "root" $root "name" $other) | fromYamlArray -}}
{{- if has $name $theirs -}}{{- $callers = append $callers $other -}}{{- end -}}
{{- end -}}
{{- $callees := include "carehub.callees" . | fromYamlArray -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "carehub.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- if $callers }}
    - from:
        - podSelector:
            matchExpressions:
              - {key: app.kubernetes.io/instance, operator: In, values: [{{ $root.Release.Name | quote }}]}
              - {key: app.kubernetes.io/component, operator: In, values: {{ toJson (sortAlpha $callers) }}}
      ports:
        - {port: grpc, protocol: TCP}
    {{- end }}
    {{- if and $svc.gatewayPorts $v.networkPolicy.gateway }}
    - from:
        {{- toYaml $v.networkPolicy.gateway | nindent 8 }}
      ports:
        {{- range $svc.gatewayPorts }}
        - {port: {{ . }}, protocol: TCP}
        {{- end }}
    {{- end }}
    {{- /* billing talking to Stripe: the processor's webhook (POST /webhooks/stripe) reaches its
    admin port from services.billing.webhook.from (default: the gateway), which must route that
    path alone there. */}}
    {{- if and (include "carehub.billing.stripe" .) ($svc.webhook | default dict).expose }}
    {{- $from := ($svc.webhook.from | default $v.networkPolicy.gateway) }}
    {{- if $from }}
    - from:
        {{- toYaml $from | nindent 8 }}
      ports:
        - {port: admin, protocol: TCP}
    {{- end }}
    {{- end }}
    {{- if $v.tests.enabled }}
    - from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/instance: {{ $root.Release.Name }}
              app.kubernetes.io/component: helm-test
      ports:
        - {port: grpc, protocol: TCP}
    {{- end }}
    {{- if $v.networkPolicy.metrics }}
    - from:
        {{- toYaml $v.networkPolicy.metrics | nindent 8 }}
      ports:
        - {port: admin, protocol: TCP}
    {{- end }}
  egress:
    {{- include "carehub.egress.dns" $root | nindent 4 }}
    {{- if $callees }}
    - to:
        - podSelector:
            matchExpressions:
              - {key: app.kubernetes.io/instance, operator: In, values: [{{ $root.Release.Name | quote }}]}
              - {key: app.kubernetes.io/component, operator: In, values: {{ toJson $callees }}}
      ports:
        - {port: {{ $v.ports.grpc }}, protocol: TCP}
    {{- end }}
    {{- include "carehub.egress.postgres" $root | nindent 4 }}
    {{- /* billing talking to Stripe: the processor's API over HTTPS (services.billing.processor.egress). */}}
    {{- if include "carehub.billing.stripe" . }}
    - to:
        {{- toYaml $svc.processor.egress.to | nindent 8 }}
      ports:
        - {port: {{ $svc.processor.egress.port }}, protocol: TCP}
    {{- end }}
    {{- if include "carehub.vaultUsed" $root }}
    - to:
        {{- toYaml $v.networkPolicy.vault.to | nindent 8 }}
      ports:
        - {port: {{ $v.networkPolicy.vault.port }}, protocol: TCP}
    {{- end }}
    {{- if $v.telemetry.otlpEndpoint }}
    - to:
        {{- toYaml $v.networkPolicy.otlp.to | nindent 8 }}
      ports:
        - {port: {{ $v.networkPolicy.otlp.port }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}

{{- define "carehub.egress.dns" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns | nindent 4 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{- define "carehub.egress.postgres" -}}
- to:
    {{- toYaml .Values.networkPolicy.postgres.to | nindent 4 }}
  ports:
    - {port: {{ .Values.networkPolicy.postgres.port }}, protocol: TCP}
{{- end }}
