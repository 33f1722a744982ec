{{/*
One helper per Kubernetes object of a service; each takes (dict "root" $ "name" "<service>").

Probes: native gRPC probes (grpc.health.v1) on the admin port. The gRPC port accepts only mTLS
with a client certificate of our CA, which kubelet's gRPC probe never presents, so the server
also answers `grpc.health.v1.Health/Check` (and nothing else of the gRPC API) in plaintext h2c
on the admin port, from the same health state: service "" is readiness (NOT_SERVING at
shutdown and while keys are stale), service "liveness" stays SERVING while the process answers,
so an unready pod is taken out of endpoints but not restarted. `helm test` checks the real gRPC
health over mTLS with `carehub health`.
*/}}

{{- define "carehub.service.pod" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $paths := include "carehub.paths" . | fromYaml -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "carehub.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/part-of: carehub
  annotations:
    checksum/config: {{ include "carehub.service.configToml" . | sha256sum }}
    {{- with $svc.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "carehub.fullname" . }}
  # The service never talks to the Kubernetes API; Vault gets a projected, audience-bound token.
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ add $svc.preStopSleepSeconds $svc.drainTimeoutSecs 15 }}
  securityContext:
    {{- include "carehub.podSecurityContext" $root | nindent 4 }}
  {{- with $v.image.pullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ $svc.spread.zone }}
      labelSelector:
        matchLabels:
          {{- include "carehub.selectorLabels" . | nindent 10 }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: {{ $svc.spread.node }}
      labelSelector:
        matchLabels:
          {{- include "carehub.selectorLabels" . | nindent 10 }}
  {{- with $svc.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $svc.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $svc.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $name }}
      image: {{ include "carehub.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: ["serve", {{ $name | quote }}, "--config", {{ $paths.config | quote }}]
      ports:
        - name: grpc
          containerPort: {{ $v.ports.grpc }}
          protocol: TCP
        - name: admin
          containerPort: {{ $v.ports.admin }}
          protocol: TCP
      env:
        # The serving role's URL only: the migrator's (owner's) Secret never reaches this pod.
        {{- include "carehub.service.databaseEnv" (dict "root" $root "name" $name "role" "app") | nindent 8 }}
        {{- include "carehub.service.vaultTokenEnv" . | nindent 8 }}
        {{- with $svc.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        grpc: {port: {{ $v.ports.admin }}, service: liveness}
        periodSeconds: 2
        failureThreshold: 60
      livenessProbe:
        grpc: {port: {{ $v.ports.admin }}, service: liveness}
        periodSeconds: 10
        timeoutSeconds: 2
        failureThreshold: 3
      readinessProbe:
        grpc: {port: {{ $v.ports.admin }}}
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 2
      lifecycle:
        # No shell in the image: the kubelet sleeps (Kubernetes >= 1.30).
        preStop:
          sleep:
            seconds: {{ $svc.preStopSleepSeconds }}
      resources:
        {{- toYaml $svc.resources | nindent 8 }}
      securityContext:
        {{- include "carehub.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "carehub.service.volumeMounts" . | nindent 8 }}
  volumes:
    {{- include "carehub.service.volumes" . | nindent 4 }}
{{- end }}

{{/*
The database connections of a service, as YAML: `migrator` (the migration Job: the tables'
owner) and `app` (the serving pods: a login role that is a member of "<database>_app" and owns
nothing), each {existingSecret, key}. The former single `database.existingSecret`/`database.key`
was the owner's URL in every documented setup, so it is read as the migrator's; `legacy` says
it was used (NOTES.txt then says to move it).
*/}}
{{- define "carehub.databaseSecrets" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- $db := $svc.database | default dict -}}
{{- $m := $db.migrator | default dict -}}
{{- $a := $db.app | default dict -}}
migrator:
  existingSecret: {{ $db.existingSecret | default $m.existingSecret | default "" | quote }}
  key: {{ $db.key | default $m.key | default "url" | quote }}
app:
  existingSecret: {{ $a.existingSecret | default "" | quote }}
  key: {{ $a.key | default "url" | quote }}
legacy: {{ if or $db.existingSecret $db.key }}true{{ else }}false{{ end }}
{{- end }}

{{/*
Refuses a service whose serving pods would get no database role of their own, or the
migrator's: secure by default, no fallback to the owner's credentials.
*/}}
{{- define "carehub.checkDatabaseSecrets" -}}
{{- $db := include "carehub.databaseSecrets" . | fromYaml -}}
{{- if not $db.app.existingSecret -}}
{{- fail (printf "carehub: services.%s.database.app.existingSecret is required: the Secret (key database.app.key, default url) with the postgres:// URL the serving pods use, of a login role that is a member of \"<database>_app\" and owns nothing (README \"Database roles\"); the chart does not fall back to the migrator's (owner's) credentials" .name) -}}
{{- end -}}
{{- if and .root.Values.migrations.enabled (not $db.migrator.existingSecret) -}}
{{- fail (printf "carehub: services.%s.database.migrator.existingSecret is required (migrations.enabled): the Secret with the postgres:// URL of the owner of the service's tables, used by the migration Job only" .name) -}}
{{- end -}}
{{- if eq $db.app.existingSecret $db.migrator.existingSecret -}}
{{- fail (printf "carehub: services.%s.database.app.existingSecret must not be the migrator's Secret (%s): the serving pods would hold the tables' owner's credentials, which can drop the audit trail's append-only trigger; give them a login role that is a member of \"<database>_app\" (README \"Database roles\")" .name $db.app.existingSecret) -}}
{{- end -}}
{{- end }}

{{/* CAREHUB_SERVER__DATABASE__URL from the Secret of one role: (dict "root" $ "name" "<service>" "role" "app"|"migrator"). */}}
{{- define "carehub.service.databaseEnv" -}}
{{- $db := include "carehub.databaseSecrets" . | fromYaml -}}
{{- $conn := index $db .role -}}
- name: CAREHUB_SERVER__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "services.%s.database.%s.existingSecret is required" .name .role) $conn.existingSecret }}
      key: {{ $conn.key }}
{{- end }}

{{/* Environment from Secrets only: nothing secret is ever a literal in the manifests. */}}
{{- define "carehub.service.vaultTokenEnv" -}}
{{- $v := .root.Values -}}
{{- if and (include "carehub.vaultUsed" .root) (eq $v.vault.auth.method "token") }}
- name: VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.vault.auth.token.secret }}
      key: token
{{- end }}
{{- end }}

{{- define "carehub.service.volumeMounts" -}}
{{- $v := .root.Values -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
- name: config
  mountPath: /etc/carehub/config.toml
  subPath: config.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if ne $v.tls.source "vaultPki" }}
# A directory mount, not subPath: the kubelet swaps renewed certificates in and the server
# reloads them every tls.reloadIntervalSecs.
- name: tls
  mountPath: /etc/carehub/tls
  readOnly: true
{{- end }}
{{- if include "carehub.vaultUsed" .root }}
{{- if eq $v.vault.auth.method "kubernetes" }}
- name: vault-token
  mountPath: /var/run/secrets/carehub/vault
  readOnly: true
{{- else if eq $v.vault.auth.method "approle" }}
- name: approle
  mountPath: /etc/carehub/approle
  readOnly: true
{{- end }}
{{- if $v.vault.caSecret }}
- name: vault-ca
  mountPath: /etc/carehub/vault-ca
  readOnly: true
{{- end }}
{{- end }}
{{- if eq $v.keys.provider "file" }}
- name: keys
  mountPath: /etc/carehub/keys
  readOnly: true
{{- end }}
{{- range $svc.extraSecretMounts }}
- name: extra-{{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "carehub.service.volumes" -}}
{{- $v := .root.Values -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
- name: config
  configMap:
    name: {{ include "carehub.fullname" . }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- if ne $v.tls.source "vaultPki" }}
- name: tls
  secret:
    secretName: {{ include "carehub.fullname" . }}-tls
    defaultMode: 0440
{{- end }}
{{- if include "carehub.vaultUsed" .root }}
{{- if eq $v.vault.auth.method "kubernetes" }}
- name: vault-token
  projected:
    defaultMode: 0440
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ $v.vault.auth.kubernetes.audience }}
          expirationSeconds: {{ $v.vault.auth.kubernetes.tokenExpirationSeconds }}
{{- else if eq $v.vault.auth.method "approle" }}
- name: approle
  secret:
    secretName: {{ include "carehub.fullname" . }}-approle
    defaultMode: 0440
    items:
      - {key: secret-id, path: secret-id}
{{- end }}
{{- if $v.vault.caSecret }}
- name: vault-ca
  secret:
    secretName: {{ $v.vault.caSecret }}
    defaultMode: 0444
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end }}
{{- if eq $v.keys.provider "file" }}
- name: keys
  secret:
    secretName: {{ $v.keys.fileSecret }}
    defaultMode: 0440
    items:
      - {key: keys.json, path: keys.json}
{{- end }}
{{- range $svc.extraSecretMounts }}
- name: extra-{{ .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "carehub.service.deployment" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "carehub.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # Never below the wanted replica count during an upgrade.
      maxUnavailable: 0
      maxSurge: 1
  template:
    {{- include "carehub.service.pod" . | nindent 4 }}
{{- end }}

{{- define "carehub.service.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "carehub.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ .root.Values.ports.grpc }}
      targetPort: grpc
      appProtocol: grpc
    - name: admin
      port: {{ .root.Values.ports.admin }}
      targetPort: admin
      appProtocol: http
{{- end }}

{{- define "carehub.service.serviceaccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
automountServiceAccountToken: false
{{- end }}

{{- define "carehub.service.pdb" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $svc.pdb.maxUnavailable }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "carehub.selectorLabels" . | nindent 6 }}
{{- end }}

{{- define "carehub.service.hpa" -}}
{{- $svc := include "carehub.values" . | fromYaml -}}
{{- if $svc.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "carehub.fullname" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "carehub.fullname" . }}
  minReplicas: {{ $svc.autoscaling.minReplicas }}
  maxReplicas: {{ $svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
{{- end }}
{{- end }}

{{- define "carehub.service.certificate" -}}
{{- $v := .root.Values -}}
{{- if eq $v.tls.source "certManager" }}
{{- $fullname := include "carehub.fullname" . }}
{{- $ns := .root.Release.Namespace }}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $fullname }}
  namespace: {{ $ns }}
  labels:
    {{- include "carehub.labels" . | nindent 4 }}
spec:
  secretName: {{ $fullname }}-tls
  duration: {{ $v.tls.certManager.duration }}
  renewBefore: {{ $v.tls.certManager.renewBefore }}
  # Peers verify the bare service name ("{{ .name }}"); the rest are for people and tools.
  dnsNames:
    - {{ .name }}
    - {{ $fullname }}
    - {{ $fullname }}.{{ $ns }}
    - {{ $fullname }}.{{ $ns }}.svc
    - {{ $fullname }}.{{ $ns }}.svc.cluster.local
  uris:
    - spiffe://{{ $v.trustDomain }}/service/{{ .name }}
  usages: [server auth, client auth, digital signature]
  privateKey:
    algorithm: ECDSA
    size: 256
    encoding: PKCS8
    rotationPolicy: Always
  issuerRef:
    {{- toYaml $v.tls.certManager.issuerRef | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Every object of one service, in order. A service's template file is just
`{{ include "carehub.service" (dict "root" $ "name" "<service>") }}`.
*/}}
{{- define "carehub.service" -}}
{{- $own := index .root.Values.services .name -}}
{{- if not $own -}}
{{- fail (printf "carehub: templates/%s.yaml exists but values have no services.%s block" .name .name) -}}
{{- end -}}
{{- if (hasKey $own "enabled" | ternary $own.enabled true) -}}
{{- range $kind := list "configmap" "serviceaccount" "service" "deployment" "pdb" "hpa" "networkpolicy" "certificate" "migrationJob" }}
{{- $doc := include (printf "carehub.service.%s" $kind) $ | trim }}
{{- if $doc }}
---
{{ $doc }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
