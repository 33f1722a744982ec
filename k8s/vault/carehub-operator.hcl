# carehub-operator: the SRE's policy for `carehub keys init`, `carehub keys rotate --service S`
# and `carehub keys rewrap`. It creates and updates key secrets (rotation adds version n+1 and
# moves "current"; old versions stay so existing data still decrypts). It may not delete or
# destroy anything: a lost key version is lost data. Attach it to a human's Vault identity
# for the time of the operation, never to a workload.
path "secret/data/carehub/*" {
  capabilities = ["create", "read", "update"]
}

# See which key secrets exist and their versions (KV v2 metadata); no delete, no destroy.
path "secret/metadata/carehub/*" {
  capabilities = ["read", "list"]
}
