-- Audit at scale (issue 12): business transactions no longer lock the chain head. They append
-- their events to this queue, in their own transaction, with no sequence number and no hash;
-- a rolled-back change leaves no row. The sequencer (platform::audit::sequencer; one active per
-- database) repeatedly takes the oldest committed rows, gives them the next gap-free sequence
-- numbers, chains their hashes into audit_events, advances audit_chain_head once and deletes
-- them from here, all in one transaction: nothing committed is skipped, nothing is sealed twice.
--
-- The existing chain is kept as it is: its rows, head and checkpoints stay valid, and new
-- events continue it once sealed.
CREATE TABLE audit_queue (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queued_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    event_id          uuid        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    kind              text        NOT NULL,
    action            text        NOT NULL,
    outcome           text        NOT NULL,
    outcome_reason    text,
    purpose           text        NOT NULL,
    actor_user_id     uuid,
    actor_role        text,
    actor_session_id  uuid,
    actor_workload    text,
    entity_type       text        NOT NULL,
    entity_id         text        NOT NULL,
    subject_id        uuid,
    source_ip         bytea,      -- sealed, as in audit_events
    user_agent        bytea,
    request_id        text,
    trace_id          text,
    span_id           text
);

-- The application role appends and the sequencer (running as the same role) deletes what it
-- sealed; rows are never updated. Default privileges already grant DML on new tables.
DO $$
DECLARE
    app text := current_database() || '_app';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app) THEN
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON audit_queue TO %I', app);
        EXECUTE format('REVOKE UPDATE, TRUNCATE ON audit_queue FROM %I', app);
    END IF;
END
$$;
