-- The audit trail (platform::audit). One hash chain per service database: every event row
-- carries a gap-free sequence number and SHA-256(canonical event || previous hash); the single
-- chain-head row serializes appenders (locked FOR UPDATE in the writer's transaction) and
-- remembers the last link, and signed checkpoints make truncating the tail detectable.
-- Columns hold ids and codes only, never PHI values.
CREATE TABLE audit_events (
    seq               bigint      PRIMARY KEY CHECK (seq > 0),
    event_id          uuid        NOT NULL UNIQUE,
    occurred_at       timestamptz NOT NULL,
    kind              text        NOT NULL,  -- what happened, e.g. identity.login
    action            text        NOT NULL,  -- create | read | update | delete | execute | disclose
    outcome           text        NOT NULL,  -- success | minor_failure | serious_failure | major_failure
    outcome_reason    text,                  -- machine reason code (ErrorReason name), no free text
    purpose           text        NOT NULL,  -- purpose of use (treatment, payment, ...)
    actor_user_id     uuid,
    actor_role        text,
    actor_session_id  uuid,
    actor_workload    text,                  -- calling workload from the mTLS certificate
    entity_type       text        NOT NULL,
    entity_id         text        NOT NULL,
    subject_id        uuid,                  -- the patient (or account) the data belongs to
    source_ip         text,                  -- forwarded by the trusted gateway only
    user_agent        text,
    request_id        text,
    trace_id          text,                  -- W3C trace id (32 hex) of the causing RPC
    span_id           text,
    prev_hash         bytea       NOT NULL,
    hash              bytea       NOT NULL
);
CREATE INDEX audit_events_subject ON audit_events (subject_id, occurred_at, seq)
    WHERE subject_id IS NOT NULL;
CREATE INDEX audit_events_actor ON audit_events (actor_user_id, occurred_at, seq)
    WHERE actor_user_id IS NOT NULL;
CREATE INDEX audit_events_time ON audit_events (occurred_at, seq);

CREATE TABLE audit_chain_head (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq   bigint  NOT NULL,
    hash  bytea   NOT NULL
);
INSERT INTO audit_chain_head (one, seq, hash) VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- Ed25519 signatures over (service, seq, hash, signed_at, key_version) of the chain head.
CREATE TABLE audit_checkpoints (
    seq          bigint      PRIMARY KEY CHECK (seq > 0),
    hash         bytea       NOT NULL,
    signed_at    timestamptz NOT NULL,
    key_version  integer     NOT NULL,
    signature    bytea       NOT NULL
);

-- How far each JSON-lines sink has shipped (at least once, in sequence order).
CREATE TABLE audit_sink_cursor (
    sink  text   PRIMARY KEY,
    seq   bigint NOT NULL
);
