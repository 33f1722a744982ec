-- Video visits: one row per appointment, as scheduling reports it (UpsertVideoVisit). Join
-- tokens are secrets and are never stored; each issue is on the audit trail.
--
-- Ids and instants are in clear, as everywhere in messaging: the window check needs them on
-- every join. The room name is what the SFU sees: derived from the appointment id under a
-- keyed hash, so that neither the appointment id (a UUIDv7 carries its creation time) nor
-- anything about the patient reaches the SFU's logs; it is kept here because a key rotation
-- must not move a visit to another room.
CREATE TABLE video_visits (
    appointment_id  uuid PRIMARY KEY,
    patient_id      uuid NOT NULL,
    provider_id     uuid NOT NULL,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    -- Final: a cancelled visit is never reopened (a late delivery of an earlier change from
    -- scheduling's outbox must not bring it back).
    cancelled       boolean NOT NULL DEFAULT false,
    room            text NOT NULL UNIQUE CHECK (room ~ '^visit-[0-9a-f]{32}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- At most a day long: the window check is what keeps tokens from being issued for days.
    CHECK (ends_at > starts_at AND ends_at <= starts_at + interval '24 hours'),
    CHECK (patient_id <> provider_id)
);
