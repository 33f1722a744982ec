-- Free text that can carry personal or health data leaves the clear (issue 9, like
-- 20261122210000 and 20261122220000): AES-256-GCM ciphertexts under the user's data key
-- (platform::crypto; subject = the user id).
-- - users.status_reason: an admin's free-text reason for a suspension, reactivation or
--   termination (row = the user id). Never read back by the API; an investigator opens it with
--   the user's data key, and shredding the user's keys makes it unreadable with the rest.
-- - device_pins.device_name: the name the user gave a device ("Jane's iPhone"; row = the device
--   id). Never read back either.
-- Development data only: the keys are outside the database, so existing values cannot be
-- encrypted in SQL. Reasons are dropped (the status itself stays); device PINs are removed
-- (their users enrol the device again; sessions keep their device_id, which has no reference).
ALTER TABLE users ALTER COLUMN status_reason TYPE bytea USING NULL;
DELETE FROM device_pins;
ALTER TABLE device_pins ALTER COLUMN device_name TYPE bytea USING NULL;
COMMENT ON COLUMN users.status_reason IS 'ciphertext (user''s data key) of the admin''s free-text reason';
COMMENT ON COLUMN device_pins.device_name IS 'ciphertext (user''s data key) of the user''s name for the device';
