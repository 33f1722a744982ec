-- Envelope encryption (platform::crypto): one row per subject whose data this service encrypts,
-- and that subject's data keys, each wrapped by the service's key-encryption key (KEK) from
-- Vault. The database never sees a KEK or an unwrapped data key.

-- A subject's row is the lock that serializes data-key creation against crypto-shredding: key
-- creation holds it FOR SHARE, shredding updates it, so no key can appear after a shred.
CREATE TABLE data_key_subjects (
    service      text        NOT NULL,
    subject      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Set once the subject's data keys were destroyed; new data for it is refused from then on.
    shredded_at  timestamptz,
    PRIMARY KEY (service, subject)
);

CREATE TABLE data_keys (
    service      text        NOT NULL,
    subject      text        NOT NULL,
    version      integer     NOT NULL CHECK (version > 0),
    kek_version  integer     NOT NULL CHECK (kek_version > 0),
    -- 12-byte nonce || AES-256-GCM(KEK, data key) || 16-byte tag; the associated data binds it
    -- to (service, subject, version).
    wrapped_key  bytea       NOT NULL,
    -- Encryptions reserved under this key so far (an upper bound of those performed): the key
    -- is retired for new data long before random 96-bit nonces risk a collision.
    uses         bigint      NOT NULL DEFAULT 0 CHECK (uses >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz,
    PRIMARY KEY (service, subject, version),
    FOREIGN KEY (service, subject) REFERENCES data_key_subjects (service, subject)
);
-- Rewrap and status walk the keys by KEK version.
CREATE INDEX data_keys_kek_version ON data_keys (service, kek_version);
