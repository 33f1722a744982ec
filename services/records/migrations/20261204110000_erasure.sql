-- Erasure by crypto-shredding: a patient's data keys are destroyed once their legal hold ends
-- (identity's account.terminated, data found to be a minor's, or an operator). Ids and instants
-- only; the reason is one of three codes.
CREATE TABLE erasures (
    patient_id    uuid PRIMARY KEY,
    reason        text NOT NULL CHECK (reason IN ('account_terminated', 'minor', 'operator')),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    due_at        timestamptz NOT NULL,
    erased_at     timestamptz,
    CHECK (due_at >= requested_at)
);
CREATE INDEX erasures_due ON erasures (due_at) WHERE erased_at IS NULL;
