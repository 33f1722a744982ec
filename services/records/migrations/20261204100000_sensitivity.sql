-- Sensitivity labels and the patient's grants.
-- Labels travel sealed with each version's content (entry_versions.content holds the sealed
-- StoredVersion: content and labels), so no table says which charts hold HIV or Part 2 data.
-- A grant's label is sealed too (row = the grant id): a grant of "HIV" to a provider would
-- say as much.

-- Who entered the entry's first version (NULL for an integration): its author keeps seeing a
-- labelled entry they entered without a grant.
ALTER TABLE entries ADD COLUMN created_by uuid;

CREATE TABLE sensitivity_grants (
    id          uuid PRIMARY KEY,
    patient_id  uuid NOT NULL,
    grantee_id  uuid NOT NULL,
    label       bytea NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (revoked_at IS NULL OR revoked_at >= granted_at)
);
CREATE INDEX sensitivity_grants_active
    ON sensitivity_grants (patient_id, grantee_id) WHERE revoked_at IS NULL;
