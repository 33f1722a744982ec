-- PHI moves under envelope encryption (platform::crypto, DESIGN.md §4): names, date of birth,
-- email, phone and the addresses verification codes were sent to are stored as AES-256-GCM
-- ciphertexts under the user's data key (subject = the user id); email is found through a
-- keyed blind index. Nothing here was production data; development rows cannot be converted in
-- SQL (the keys are outside the database), so they are removed.
DELETE FROM users;

DROP INDEX users_email_key;
ALTER TABLE users
    DROP COLUMN email,
    DROP COLUMN phone,
    DROP COLUMN given_name,
    DROP COLUMN family_name,
    DROP COLUMN date_of_birth;
ALTER TABLE users
    ADD COLUMN email          bytea NOT NULL,   -- ciphertext of the lower-cased address
    ADD COLUMN email_bidx     bytea NOT NULL,   -- blind index (HMAC) of the lower-cased address
    ADD COLUMN phone          bytea,            -- ciphertext of the E.164 number
    ADD COLUMN given_name     bytea NOT NULL,
    ADD COLUMN family_name    bytea NOT NULL,
    ADD COLUMN date_of_birth  bytea;            -- ciphertext of YYYY-MM-DD
-- Keeps its name: the API maps a violation of users_email_key to ALREADY_EXISTS.
CREATE UNIQUE INDEX users_email_key ON users (email_bidx);

ALTER TABLE verification_codes DROP COLUMN destination;
ALTER TABLE verification_codes ADD COLUMN destination bytea NOT NULL;  -- ciphertext

-- When each token-signing key version was first seen by any replica: a version signs only once
-- it has been published (JWKS) for the configured lead time, and a replaced version stays
-- published until every token it signed has expired.
CREATE TABLE signing_key_versions (
    version        integer PRIMARY KEY CHECK (version > 0),
    kid            text NOT NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now()
);
