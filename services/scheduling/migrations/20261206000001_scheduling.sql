-- Scheduling: the provider directory, visit types, weekly windows and exceptions, slot claims
-- (holds and appointments), consultation requests, reminders and calendar feed tokens.
--
-- Directory data, rules and times are in clear (not health data). Reasons, cancellation notes,
-- consultation reasons and decline reasons are ciphertexts under the patient's data key.

-- Exclusion constraints over (uuid WITH =, tstzrange WITH &&) need btree_gist's uuid operator
-- class (a trusted extension: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE providers (
    provider_id             uuid PRIMARY KEY,
    time_zone               text NOT NULL,
    specialties             text[] NOT NULL,
    license_states          text[] NOT NULL,
    languages               text[] NOT NULL,
    accepting_new_patients  boolean NOT NULL,
    visit_type_ids          uuid[] NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX providers_specialties ON providers USING gin (specialties);
CREATE INDEX providers_license_states ON providers USING gin (license_states);

CREATE TABLE visit_types (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    duration_minutes  integer NOT NULL CHECK (duration_minutes BETWEEN 5 AND 480),
    buffer_minutes    integer NOT NULL CHECK (buffer_minutes BETWEEN 0 AND 120),
    modality          text NOT NULL CHECK (modality IN ('telehealth', 'in_person')),
    price_code        text NOT NULL,
    intake_form       text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- A provider's weekly windows, replaced as a whole by SetWeeklyAvailability.
CREATE TABLE weekly_windows (
    provider_id     uuid NOT NULL REFERENCES providers (provider_id),
    ordinal         integer NOT NULL,
    -- ISO weekday: 1 = Monday .. 7 = Sunday.
    weekday         smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_minute    smallint NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute      smallint NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
    visit_type_ids  uuid[] NOT NULL,
    PRIMARY KEY (provider_id, ordinal),
    CHECK (start_minute < end_minute)
);

CREATE TABLE availability_exceptions (
    id           uuid PRIMARY KEY,
    provider_id  uuid NOT NULL REFERENCES providers (provider_id),
    kind         text NOT NULL CHECK (kind IN ('time_off', 'extra_hours')),
    during       tstzrange NOT NULL CHECK (NOT isempty(during)),
    created_by   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX availability_exceptions_provider ON availability_exceptions USING gist (provider_id, during);

-- What takes a provider's time: a hold (until it expires or is released) or an appointment
-- (until it is cancelled). The two exclusion constraints are what make double booking
-- impossible, whatever the concurrency: no two active claims of one provider overlap (buffers
-- included), nor two of one patient. A hold past its expiry still counts until released; a
-- writer releases the stale holds its new claim overlaps in the same transaction, and the
-- sweeper releases the rest.
CREATE TABLE slot_claims (
    id                uuid PRIMARY KEY,
    provider_id       uuid NOT NULL,
    patient_id        uuid NOT NULL,
    -- The visit: [start, end).
    visit             tstzrange NOT NULL CHECK (NOT isempty(visit)),
    -- The visit and the buffer after it: what the provider cannot give anyone else.
    blocked           tstzrange NOT NULL CHECK (blocked @> visit),
    -- Holds: when the hold lapses. Appointments: null.
    hold_expires_at   timestamptz,
    active            boolean NOT NULL DEFAULT true,
    EXCLUDE USING gist (provider_id WITH =, blocked WITH &&) WHERE (active),
    EXCLUDE USING gist (patient_id WITH =, visit WITH &&) WHERE (active)
);
CREATE INDEX slot_claims_stale_holds ON slot_claims (hold_expires_at)
    WHERE active AND hold_expires_at IS NOT NULL;

CREATE TABLE holds (
    id             uuid PRIMARY KEY REFERENCES slot_claims (id),
    provider_id    uuid NOT NULL,
    patient_id     uuid NOT NULL,
    visit_type_id  uuid NOT NULL REFERENCES visit_types (id),
    start_time     timestamptz NOT NULL,
    end_time       timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    status         text NOT NULL CHECK (status IN ('active', 'released', 'booked', 'expired')),
    created_by     uuid NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE appointments (
    id                       uuid PRIMARY KEY,
    -- The claim that holds its time (a hold's claim when booked from a hold).
    claim_id                 uuid NOT NULL UNIQUE REFERENCES slot_claims (id),
    provider_id              uuid NOT NULL,
    patient_id               uuid NOT NULL,
    visit_type_id            uuid NOT NULL REFERENCES visit_types (id),
    modality                 text NOT NULL CHECK (modality IN ('telehealth', 'in_person')),
    start_time               timestamptz NOT NULL,
    end_time                 timestamptz NOT NULL CHECK (end_time > start_time),
    status                   text NOT NULL CHECK (status IN ('requested', 'booked', 'checked_in',
                                 'in_progress', 'completed', 'cancelled', 'no_show')),
    intake_form              text,
    intake_status            text NOT NULL CHECK (intake_status IN ('not_required', 'pending', 'submitted')),
    -- Sealed under the patient's data key (row = the appointment id); empty reason: null.
    reason                   bytea,
    cancel_reason            text,
    cancel_note              bytea,
    late_cancellation        boolean NOT NULL DEFAULT false,
    reschedule_count         integer NOT NULL DEFAULT 0,
    consultation_request_id  uuid,
    -- Increases with every change: the etag, and the order of the video visit's upserts.
    revision                 bigint NOT NULL DEFAULT 1,
    created_by               uuid NOT NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX appointments_patient ON appointments (patient_id, start_time, id);
CREATE INDEX appointments_provider ON appointments (provider_id, start_time, id);

CREATE TABLE consultation_requests (
    id              uuid PRIMARY KEY,
    patient_id      uuid NOT NULL,
    reason          bytea NOT NULL,
    -- [[start, end], ...] as RFC 3339 instants (not health data).
    preferred_times jsonb NOT NULL,
    state           text NOT NULL,
    specialty       text,
    status          text NOT NULL CHECK (status IN ('open', 'accepted', 'declined')),
    appointment_id  uuid REFERENCES appointments (id),
    decline_reason  bytea,
    decided_by      uuid,
    created_by      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consultation_requests_open ON consultation_requests (created_at, id) WHERE status = 'open';
CREATE INDEX consultation_requests_patient ON consultation_requests (patient_id, created_at, id);

-- Reminders: one row per appointment and offset, written when the appointment is booked (or
-- moved). The reminder worker takes due pending rows with FOR UPDATE SKIP LOCKED and, in one
-- transaction, queues the notification in the outbox and marks the row sent: each reminder is
-- handed over once, across replicas and restarts. A cancellation or reschedule marks pending
-- rows cancelled under the same row locks, so a cancelled appointment's reminder is never
-- handed over.
CREATE TABLE reminders (
    id              uuid PRIMARY KEY,
    appointment_id  uuid NOT NULL REFERENCES appointments (id),
    offset_minutes  integer NOT NULL,
    -- The start it reminds of (a reschedule cancels it and writes new rows).
    start_time      timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    state           text NOT NULL CHECK (state IN ('pending', 'sent', 'cancelled')),
    handled_at      timestamptz
);
CREATE INDEX reminders_due ON reminders (due_at) WHERE state = 'pending';
CREATE INDEX reminders_appointment ON reminders (appointment_id);

-- Calendar feeds: the secret token is never stored, only its SHA-256.
CREATE TABLE calendar_feeds (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL,
    -- Whose appointments: the owner's as patient or as provider.
    owner_kind   text NOT NULL CHECK (owner_kind IN ('patient', 'provider')),
    token_hash   bytea NOT NULL UNIQUE,
    -- The IANA zone the feed writes its events in.
    time_zone    text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX calendar_feeds_owner ON calendar_feeds (owner_id);
