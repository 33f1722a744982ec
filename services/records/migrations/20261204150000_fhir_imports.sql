-- FHIR imports: which bundles were applied (by the integration's bundle identifier, kept as a
-- keyed hash: an identifier can embed a patient's MRN) and which entry each imported resource
-- id became (hashed the same way), so that a later import of the resource updates the entry.
CREATE TABLE fhir_imports (
    bundle_key   bytea PRIMARY KEY,
    patient_id   uuid NOT NULL,
    workload     text NOT NULL,
    entry_ids    uuid[] NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fhir_resource_links (
    patient_id    uuid NOT NULL,
    resource_key  bytea NOT NULL,
    entry_id      uuid NOT NULL REFERENCES entries (id),
    PRIMARY KEY (patient_id, resource_key)
);
