-- The patient's demographics, sealed under their data key (row = the patient's id).
CREATE TABLE demographics (
    patient_id  uuid PRIMARY KEY,
    body        bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
