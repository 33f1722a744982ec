-- Intake responses: the patient's answers to a visit type's intake form, recorded by scheduling
-- (RecordsInternal.RecordIntakeResponse, through its outbox). Each submission for an
-- appointment's form is a new version; a stored one never changes.
--
-- The form's name is in clear: it names a form ("new-patient"), not the patient's health. The
-- answers, question ids included, are sealed under the patient's data key (row = the response's
-- id): a question id can say as much as its answer ("hiv_status").
CREATE TABLE intake_responses (
    id              uuid PRIMARY KEY,
    patient_id      uuid NOT NULL,
    appointment_id  uuid NOT NULL,
    form            text NOT NULL CHECK (form ~ '^[a-z0-9._-]{1,64}$'),
    answers         bytea NOT NULL,
    version         integer NOT NULL CHECK (version >= 1),
    -- When the patient submitted the form (scheduling's instant), and when records stored it.
    submitted_at    timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (patient_id, appointment_id, form, version)
);
