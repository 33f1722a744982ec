-- Records: the chart (entries and their versions), care teams and break-glass accesses.
-- Clinical content and free text are ciphertexts under the patient's data key (platform
-- envelope, subject = the patient's user id); ids, kinds, sources and instants are in clear.

-- A chart entry: its identity and its current version. The content lives in entry_versions.
CREATE TABLE entries (
    id          uuid PRIMARY KEY,
    patient_id  uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('condition', 'medication', 'allergy', 'lab_result')),
    -- The current version: an update is `UPDATE entries SET version = version + 1 WHERE id = $1
    -- AND version = <the etag's>`, so that of two writers holding one etag exactly one wins.
    version     bigint NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX entries_patient ON entries (patient_id, created_at, id);

-- Every version of every entry, never changed once written (history and provenance).
CREATE TABLE entry_versions (
    entry_id     uuid NOT NULL REFERENCES entries (id),
    version      bigint NOT NULL CHECK (version >= 1),
    -- The EntryContent message, sealed (row = '<entry id>/<version>').
    content      bytea NOT NULL,
    source       text NOT NULL CHECK (source IN ('patient', 'provider', 'staff', 'integration')),
    entered_by   uuid,
    entered_at   timestamptz NOT NULL DEFAULT now(),
    verified_by  uuid,
    verified_at  timestamptz,
    PRIMARY KEY (entry_id, version),
    CHECK ((verified_by IS NULL) = (verified_at IS NULL)),
    CHECK ((source = 'integration') = (entered_by IS NULL))
);

-- Care-team membership periods. An active period has no end; one active period per member.
CREATE TABLE care_team_members (
    id          uuid PRIMARY KEY,
    patient_id  uuid NOT NULL,
    member_id   uuid NOT NULL,
    member_role text NOT NULL CHECK (member_role IN ('provider', 'staff')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    added_by    uuid NOT NULL,
    ended_by    uuid,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE UNIQUE INDEX care_team_one_active_period
    ON care_team_members (patient_id, member_id) WHERE ended_at IS NULL;
-- The access check: is this user an active member for this patient?
CREATE INDEX care_team_member_active
    ON care_team_members (member_id, patient_id) WHERE ended_at IS NULL;

-- Emergency accesses by providers outside the care team: open until expires_at.
CREATE TABLE break_glass_accesses (
    id           uuid PRIMARY KEY,
    patient_id   uuid NOT NULL,
    provider_id  uuid NOT NULL,
    -- The stated reason, sealed (row = the access id).
    reason       bytea NOT NULL,
    opened_at    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK (expires_at > opened_at)
);
CREATE INDEX break_glass_open ON break_glass_accesses (provider_id, patient_id, expires_at);
CREATE INDEX break_glass_review ON break_glass_accesses (opened_at DESC, id DESC);
