# carehub-billing: what the billing service may do in Vault, and nothing more. Written for the default
# mounts (KV v2 at secret/, PKI at pki/); setup.sh rewrites the paths for other mounts or KV v1.

# Its own keys: carehub/billing/kek, blind-index, audit-checkpoint, and the payment processor's
# secrets at carehub/billing/processor (secret_key, webhook_secret, webhook_secret_previous: the
# chart's services.billing.processor.vaultPath, read at start). Read only; only
# carehub-operator writes (rotation), and no service can read another's.
path "secret/data/carehub/billing/*" {
  capabilities = ["read"]
}

# Its own mTLS certificate (SAN URI spiffe://<trust-domain>/service/billing).
path "pki/issue/carehub-billing" {
  capabilities = ["update"]
}
