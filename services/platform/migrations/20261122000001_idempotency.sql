-- Answers of mutating RPCs, keyed by the caller's idempotency key, so that a retry returns the
-- first answer. Lives in the carehub_platform schema of each service's own database.
CREATE TABLE idempotency_keys (
    scope         text        NOT NULL,  -- gRPC method path
    actor         text        NOT NULL,  -- user:<id> or workload:<name>
    key           text        NOT NULL,
    request_hash  bytea       NOT NULL,  -- SHA-256 of the encoded request
    response      bytea       NOT NULL,  -- encoded response message
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, actor, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
