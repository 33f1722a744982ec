-- End users' IP addresses are HIPAA identifiers (45 CFR 164.514(b)(2)(i)(O)), and user agents
-- go with them: they leave the clear like the rest of identity's PHI (20261122210000).
-- - sessions.ip_address / user_agent: AES-256-GCM ciphertexts under the user's data key
--   (platform::crypto; subject = the user id, row = the session id), decrypted for ListSessions.
-- - mfa_challenges.ip_address / user_agent: never read back (the session that completing a
--   challenge opens records the completing request's address), so they are no longer stored.
-- - login_throttle 'src:' keys: 'src:' || hex(HMAC blind index of the address) instead of
--   'src:' || ip, like the 'acct:' keys.
-- Development data only: the keys are outside the database, so existing values cannot be
-- encrypted in SQL and are dropped.
ALTER TABLE sessions
    DROP COLUMN ip_address,
    DROP COLUMN user_agent;
ALTER TABLE sessions
    ADD COLUMN ip_address bytea,   -- ciphertext of the client's address
    ADD COLUMN user_agent bytea;   -- ciphertext of the client's user agent

ALTER TABLE mfa_challenges
    DROP COLUMN ip_address,
    DROP COLUMN user_agent;

DELETE FROM login_throttle WHERE key LIKE 'src:%';
