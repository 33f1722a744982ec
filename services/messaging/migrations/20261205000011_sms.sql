-- The SMS consent ledger: per number, the current state and every change with its time and
-- source (a carrier keyword through the webhook, an opt-in recorded through the API, identity's
-- communication preferences). Numbers are identifiers: found by blind index, kept sealed under
-- the number row's own id (so that one number can be crypto-shredded on its own).

CREATE TABLE sms_numbers (
    id          uuid PRIMARY KEY,
    phone_bidx  bytea NOT NULL UNIQUE,
    phone       bytea NOT NULL,
    state       text NOT NULL DEFAULT 'none' CHECK (state IN ('none', 'opted_in', 'opted_out')),
    -- When the current state was decided; a decision older than this is ignored.
    changed_at  timestamptz,
    -- The last user known to hold the number (audit subject), when one is known.
    user_id     uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sms_consent_changes (
    id           uuid PRIMARY KEY,
    number_id    uuid NOT NULL REFERENCES sms_numbers (id),
    state        text NOT NULL CHECK (state IN ('opted_in', 'opted_out')),
    -- "webhook:STOP", "identity-preferences", or the opt-in's source ("web-form", "paper").
    source       text NOT NULL CHECK (source ~ '^[A-Za-z0-9._:-]{1,80}$'),
    changed_at   timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_consent_changes_number ON sms_consent_changes (number_id, changed_at, id);
