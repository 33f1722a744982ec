#!/usr/bin/env bash
# Configures Vault for carehub: policies, Kubernetes auth roles (one per service, bound to the
# ServiceAccount carehub-<service>), optional AppRole roles and the PKI roles that issue the
# services' certificates. Idempotent: every write replaces the previous definition.
#
#   VAULT_ADDR=... VAULT_TOKEN=<admin token> k8s/vault/setup.sh
#
# Settings (environment): NAMESPACE (carehub), TRUST_DOMAIN (carehub.local), KV_MOUNT (secret),
# KV_VERSION (2), PKI_MOUNT (pki), K8S_AUTH_MOUNT (kubernetes), AUDIENCE (vault, as the chart's
# vault.auth.kubernetes.audience), APPROLE=1 to create AppRole roles too, PKI_TTL (72h),
# SERVICES (identity scheduling messaging records billing).
# It does not enable or configure the engines themselves (KV, PKI with its CA, the Kubernetes auth
# method's kubernetes_host): that is per cluster; see README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")"

NAMESPACE=${NAMESPACE:-carehub}
TRUST_DOMAIN=${TRUST_DOMAIN:-carehub.local}
KV_MOUNT=${KV_MOUNT:-secret}
KV_VERSION=${KV_VERSION:-2}
PKI_MOUNT=${PKI_MOUNT:-pki}
K8S_AUTH_MOUNT=${K8S_AUTH_MOUNT:-kubernetes}
AUDIENCE=${AUDIENCE:-vault}
PKI_TTL=${PKI_TTL:-72h}
SERVICES=${SERVICES:-identity scheduling messaging records billing}

# The policies are written for KV v2 at secret/ and PKI at pki/; adapt the paths.
policy_text() {
  local text
  text=$(sed -e "s#\"secret/#\"$KV_MOUNT/#" -e "s#\"pki/#\"$PKI_MOUNT/#" "$1")
  if [ "$KV_VERSION" = 1 ]; then
    # KV v1 has no data/ and metadata/ prefixes; "list" on the folder replaces metadata reads.
    text=$(printf '%s\n' "$text" | sed -e "s#\"$KV_MOUNT/data/#\"$KV_MOUNT/#" -e "s#\"$KV_MOUNT/metadata/#\"$KV_MOUNT/#")
  fi
  printf '%s\n' "$text"
}

for s in $SERVICES; do
  policy_text "carehub-$s.hcl" | vault policy write "carehub-$s" -
done
policy_text carehub-operator.hcl | vault policy write carehub-operator -

for s in $SERVICES; do
  # Kubernetes auth: only the pods running as ServiceAccount carehub-<s> in $NAMESPACE, with a
  # projected token minted for audience $AUDIENCE, get the policy carehub-<s>.
  vault write "auth/$K8S_AUTH_MOUNT/role/carehub-$s" \
    bound_service_account_names="carehub-$s" \
    bound_service_account_namespaces="$NAMESPACE" \
    audience="$AUDIENCE" \
    alias_name_source=serviceaccount_name \
    token_policies="carehub-$s" \
    token_ttl=1h token_max_ttl=4h

  if [ "${APPROLE:-0}" = 1 ]; then
    vault write "auth/approle/role/carehub-$s" \
      token_policies="carehub-$s" token_ttl=1h token_max_ttl=4h \
      secret_id_ttl=720h secret_id_num_uses=0
  fi

  # PKI role: certificates for <s> only — the bare name peers verify, its Service names, and
  # exactly its SPIFFE id.
  vault write "$PKI_MOUNT/roles/carehub-$s" \
    allowed_domains="$s,carehub-$s,carehub-$s.$NAMESPACE,carehub-$s.$NAMESPACE.svc,carehub-$s.$NAMESPACE.svc.cluster.local" \
    allow_bare_domains=true allow_subdomains=false allow_glob_domains=false \
    allow_localhost=false allow_ip_sans=false \
    allowed_uri_sans="spiffe://$TRUST_DOMAIN/service/$s" \
    server_flag=true client_flag=true \
    key_type=ec key_bits=256 \
    max_ttl="$PKI_TTL" ttl="$PKI_TTL" \
    no_store=true
done
echo "carehub Vault policies and roles written for: $SERVICES"
