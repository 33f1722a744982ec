# carehub-messaging: what the messaging service may do in Vault, and nothing more. Written for the default
# mounts (KV v2 at secret/, PKI at pki/); setup.sh rewrites the paths for other mounts or KV v1.

# Its own keys: carehub/messaging/kek, blind-index, audit-checkpoint. Read only; only
# carehub-operator writes (rotation), and no service can read another's. The video SFU's API
# secret is not stored here: messaging derives it from its KEK for messaging.video.api_key
# (README "Video visits"), so a KEK rotation changes it and the SFU's copy must follow.
path "secret/data/carehub/messaging/*" {
  capabilities = ["read"]
}

# Its own mTLS certificate (SAN URI spiffe://<trust-domain>/service/messaging).
path "pki/issue/carehub-messaging" {
  capabilities = ["update"]
}
