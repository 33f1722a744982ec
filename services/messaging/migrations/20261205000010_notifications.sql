-- Notifications (SendNotification) and their deliveries, one per channel. What could identify
-- someone or open their account is sealed under the recipient's data key: the template's
-- parameters (codes, reset links), a direct address, each delivery's address. Statuses,
-- reasons, attempts and instants are in clear: they are what operators and callers read.

CREATE TABLE notifications (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    template         text NOT NULL CHECK (template IN ('new_message', 'appointment_reminder',
                         'verification_code', 'password_reset', 'promotion')),
    urgent           boolean NOT NULL,
    -- Deduplication: a calling workload's key names one notification.
    caller_workload  text NOT NULL,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    -- The template's parameters as JSON, sealed (row = this id, subject = user_id).
    params           bytea NOT NULL,
    -- The channels the caller asked for (empty: the recipient's preferences chose).
    channels         text[] NOT NULL,
    -- The caller's direct address (a number or email being verified), sealed like params.
    direct_address   bytea,
    -- The recipient's quiet hours when it was accepted, for retries that land in them.
    time_zone        text NOT NULL,
    quiet_start      smallint NOT NULL CHECK (quiet_start BETWEEN 0 AND 23),
    quiet_end        smallint NOT NULL CHECK (quiet_end BETWEEN 0 AND 23),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (caller_workload, idempotency_key)
);
CREATE INDEX notifications_user ON notifications (user_id, created_at);

CREATE TABLE notification_deliveries (
    id               uuid PRIMARY KEY,
    notification_id  uuid NOT NULL REFERENCES notifications (id),
    channel          text NOT NULL CHECK (channel IN ('sms', 'email', 'push')),
    status           text NOT NULL CHECK (status IN ('pending', 'sent', 'skipped', 'failed')),
    -- A code, never free text: why it was skipped or failed ("sms_opted_out"), why a pending
    -- one waits ("quiet_hours", the last error before a retry).
    reason           text CHECK (reason ~ '^[a-z0-9_]{1,64}$'),
    -- Where it goes, sealed (row = this id, subject = the recipient); none for push.
    address          bytea,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz,
    -- A worker's claim: while lease_until is ahead, no other worker takes the row; the claim id
    -- proves, when it reports back, that the row is still its own.
    lease_until      timestamptz,
    claim            uuid,
    -- The provider's id of the message (Twilio's SM...).
    provider_ref     text,
    sent_at          timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
    WHERE status = 'pending';
