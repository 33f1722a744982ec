-- No identifier in clear (issue 9): the client address and user agent of audit events are now
-- sealed (AES-256-GCM) under a key of the service's audit trail, derived from the service's KEK;
-- the KEK version is the 2nd..5th byte of each value (layout in platform::audit::seal), so rows
-- stay readable after a KEK rotation. The hash chain covers the sealed bytes (event hash
-- domain v2), so the chain verifies without the key.
--
-- Rows written before this change held both in clear and were hashed under domain v1: they are
-- dropped, with their checkpoints and sink cursors, and the chain restarts at the genesis hash.
-- Only development installations have such rows (nothing is deployed yet); a production trail
-- would instead have to be re-sealed and re-chained under a new, documented anchor.
TRUNCATE audit_events, audit_checkpoints, audit_sink_cursor;
UPDATE audit_chain_head
   SET seq = 0, hash = '\x0000000000000000000000000000000000000000000000000000000000000000';
ALTER TABLE audit_events
    ALTER COLUMN source_ip TYPE bytea USING NULL,
    ALTER COLUMN user_agent TYPE bytea USING NULL;
COMMENT ON COLUMN audit_events.source_ip IS 'client address as forwarded by the trusted gateway, sealed under the audit-trail key (KEK version in bytes 2..5)';
COMMENT ON COLUMN audit_events.user_agent IS 'client user agent as forwarded by the trusted gateway, sealed under the audit-trail key (KEK version in bytes 2..5)';
