# carehub-scheduling: what the scheduling service may do in Vault, and nothing more. Written for the default
# mounts (KV v2 at secret/, PKI at pki/); setup.sh rewrites the paths for other mounts or KV v1.

# Its own keys: carehub/scheduling/kek, blind-index, audit-checkpoint. Read only; only
# carehub-operator writes (rotation), and no service can read another's.
path "secret/data/carehub/scheduling/*" {
  capabilities = ["read"]
}

# Its own mTLS certificate (SAN URI spiffe://<trust-domain>/service/scheduling).
path "pki/issue/carehub-scheduling" {
  capabilities = ["update"]
}
