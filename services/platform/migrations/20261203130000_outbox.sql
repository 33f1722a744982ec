-- The transactional outbox (DESIGN.md §1, §4; carehub_platform::outbox): a cross-service effect
-- is a row written in the same transaction as the change that causes it, and a relay in every
-- replica delivers it to the target service's RPC until the target acknowledges it.
--
-- state: pending (waiting, or claimed by a relay until next_attempt_at), delivered, or dead
-- (failed max_attempts times; `carehub outbox retry` makes it pending again).
-- A claim sets lease_token and pushes next_attempt_at to the end of the lease: another relay
-- takes the row up only after the lease has expired (its holder crashed), and the holder's
-- acknowledgement only counts while its token is still the row's.
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    -- The subscriber's name in [server.outbox.targets] (records, messaging, ...).
    target text NOT NULL,
    -- The gRPC path delivered to: /carehub.common.v1.AccountEvents/ApplyAccountEvent.
    method text NOT NULL,
    -- The encoded request, sealed under a key derived from the service's KEK (it may carry
    -- personal data); bound to the row id.
    payload bytea NOT NULL,
    -- W3C trace context of the request that wrote the row; the delivery continues it.
    traceparent text,
    tracestate text,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_token uuid,
    -- gRPC code and message of the last failure (messages carry ids only, never PHI).
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);

CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 'delivered';
CREATE INDEX outbox_dead ON outbox (created_at) WHERE state = 'dead';
