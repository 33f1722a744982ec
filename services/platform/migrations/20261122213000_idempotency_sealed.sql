-- Stored answers can carry personal data (a registration echoes name and email): they are now
-- sealed with a key derived from the service's KEK, and the request fingerprint is keyed too.
-- Answers stored before this change were plaintext; they are dropped (they only serve retries).
DELETE FROM idempotency_keys;
ALTER TABLE idempotency_keys ADD COLUMN key_version integer NOT NULL;
COMMENT ON COLUMN idempotency_keys.request_hash IS 'HMAC-SHA-256 of the encoded request, keyed from KEK version key_version';
COMMENT ON COLUMN idempotency_keys.response IS 'AES-256-GCM sealed encoded response (nonce || ciphertext), key derived from KEK version key_version';
