{{/*
Migration Job of a service: `carehub migrate <service>` before every install and upgrade
(Helm hook), so new pods never start against an old schema. Hooks run before the release's
ordinary objects exist, so the Job needs nothing of them: the database URL comes from the
service's migrator Secret (the tables' owner; the serving pods get another role, see
carehub.databaseSecrets), identity's endpoint is set as in the service's config (every service but identity), so
are the settings of its own table the chart wires (messaging.records_endpoint,
scheduling.feed_base_url), and
every other setting keeps its default. Migrations are
expand-only (old pods keep working against the new schema), which is what makes a rolling
upgrade and `helm rollback` safe.
*/}}
{{- define "carehub.service.migrationJob" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if $v.migrations.enabled }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "carehub.fullname" . }}-migrate
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" (dict "root" $root "name" "migrate") | nindent 4 }}
    carehub.io/service: {{ .name }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "0"
    # Failed Jobs stay for `kubectl logs`; the next attempt replaces them.
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $v.migrations.backoffLimit }}
  activeDeadlineSeconds: {{ $v.migrations.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "carehub.selectorLabels" (dict "root" $root "name" "migrate") | nindent 8 }}
        carehub.io/service: {{ .name }}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "carehub.podSecurityContext" $root | nindent 8 }}
      {{- with $v.image.pullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: migrate
          image: {{ include "carehub.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: ["migrate", {{ .name | quote }}]
          env:
            # The owner's URL: the only pod that gets it. Nothing else (no Vault token, no keys).
            {{- include "carehub.service.databaseEnv" (dict "root" $root "name" .name "role" "migrator") | nindent 12 }}
            - name: CAREHUB_SERVER__TELEMETRY__LOG_FORMAT
              value: json
            {{- if ne .name "identity" }}
            # Not called while migrating (this Job reaches DNS and Postgres only), but loading the
            # service's configuration validates it whole, and records refuses one without it.
            - name: CAREHUB_SERVER__AUTH__IDENTITY_ENDPOINT
              value: {{ include "carehub.identityEndpoint" $root | quote }}
            {{- end }}
            {{- /* The settings of the service's own table the chart wires (messaging refuses a
            configuration without records_endpoint; scheduling validates feed_base_url), as the
            service's config has them. Strings only: billing's processor table stays out (the
            Job validates the sandbox default and never calls the processor or reads Vault). */}}
            {{- $settings := include "carehub.settings" . | fromYaml }}
            {{- range $key := keys (include "carehub.wiredSettings" . | fromYaml) | sortAlpha }}
            {{- $value := index $settings $key }}
            {{- if kindIs "string" $value }}
            - name: {{ printf "CAREHUB_%s__%s" ($.name | upper | replace "-" "_") ($key | upper) }}
              value: {{ $value | quote }}
            {{- end }}
            {{- end }}
          resources:
            requests: {cpu: 50m, memory: 64Mi}
            limits: {memory: 256Mi}
          securityContext:
            {{- include "carehub.containerSecurityContext" $root | nindent 12 }}
{{- end }}
{{- end }}
