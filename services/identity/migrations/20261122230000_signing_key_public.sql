-- The public key of each signing-key version, recorded by the replica that first saw it, so that
-- every replica publishes every scheduled version even when its own copy of the key source lags
-- (the public key is not a secret; the Ed25519 seed stays in Vault).
ALTER TABLE signing_key_versions ADD COLUMN public_key bytea;
