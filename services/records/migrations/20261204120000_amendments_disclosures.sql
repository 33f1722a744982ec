-- Amendment requests (HIPAA 164.526) and the accounting of disclosures (164.528). Every text
-- is sealed under the patient's data key (row = the row's id); ids, states and instants in
-- clear.

CREATE TABLE amendments (
    id                uuid PRIMARY KEY,
    patient_id        uuid NOT NULL,
    entry_id          uuid NOT NULL REFERENCES entries (id),
    status            text NOT NULL CHECK (status IN ('requested', 'accepted', 'denied')),
    reason            bytea NOT NULL,
    requested_at      timestamptz NOT NULL DEFAULT now(),
    due_at            timestamptz NOT NULL,
    -- Set once the deadline was extended (once only).
    extension_reason  bytea,
    decided_by        uuid,
    decided_at        timestamptz,
    denial_reason     bytea,
    amended_version   bigint,
    disagreement      bytea,
    disagreement_at   timestamptz,
    rebuttal          bytea,
    rebuttal_by       uuid,
    rebuttal_at       timestamptz,
    CHECK ((status = 'requested') = (decided_at IS NULL)),
    CHECK ((status = 'denied') = (denial_reason IS NOT NULL)),
    CHECK ((status = 'accepted') = (amended_version IS NOT NULL)),
    CHECK (disagreement IS NULL OR status = 'denied'),
    CHECK (rebuttal IS NULL OR disagreement IS NOT NULL)
);
CREATE INDEX amendments_patient ON amendments (patient_id, requested_at DESC, id DESC);
CREATE INDEX amendments_entry ON amendments (entry_id);

CREATE TABLE disclosures (
    id             uuid PRIMARY KEY,
    patient_id     uuid NOT NULL,
    recipient      bytea NOT NULL,
    purpose        bytea NOT NULL,
    description    bytea NOT NULL,
    entry_ids      uuid[] NOT NULL DEFAULT '{}',
    amendment_ids  uuid[] NOT NULL DEFAULT '{}',
    disclosed_at   timestamptz NOT NULL,
    recorded_by    uuid NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disclosures_accounting ON disclosures (patient_id, disclosed_at DESC, id DESC);
