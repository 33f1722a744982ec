-- The audit trail is append-only for the application (issue 9): nothing the services run may
-- UPDATE, DELETE or TRUNCATE audit events or checkpoints. Two lines of defence:
--
-- 1. Privileges. The group role "<database>_app" (for example carehub_identity_app) holds what
--    the services need: DML on the service's tables and the platform's, but on audit_events and
--    audit_checkpoints only SELECT and INSERT. In production the service's login role is made a
--    member of it (GRANT carehub_identity_app TO identity) and does not own the tables; the
--    migration job runs as the owner. The role is created here when the migrating role may
--    create roles; otherwise a warning says so and an operator creates it (README "Database
--    roles"). Tables created later by the owner get the same grants (default privileges).
-- 2. A trigger, for every role including the table owner (tests and `carehub up` connect as the
--    owner or a superuser): UPDATE, DELETE and TRUNCATE on audit_events and audit_checkpoints
--    fail with SQLSTATE 42501. Only maintenance by a superuser (session_replication_role =
--    replica) or the owner (ALTER TABLE ... DISABLE TRIGGER) gets past it, and what it changes
--    is then caught by `carehub audit verify` against the checkpoints shipped by the sink.
--
-- The chain head (updated by every append), checkpoint inserts and the sink cursors keep working.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'carehub_platform.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never updated or deleted (README: audit trail)';
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints FROM PUBLIC;

DO $$
DECLARE
    app text := current_database() || '_app';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', app);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
            WHEN insufficient_privilege THEN
                RAISE WARNING 'role % was not created (the migrating role may not create roles): create it and grant it as README "Database roles" says', app;
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA carehub_platform, public TO %I', app);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA carehub_platform, public TO %I', app);
    EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA carehub_platform, public TO %I', app);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA carehub_platform, public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', app);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA carehub_platform, public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I', app);
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON audit_events, audit_checkpoints FROM %I', app);
END
$$;
