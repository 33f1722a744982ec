-- Identity's side of messaging (IdentityInternal.ApplySmsConsent, and the ApplySmsPreference
-- events identity sends to messaging).
--
-- users.phone_bidx: keyed blind index (HMAC, platform::crypto, scope 'users.phone', phone
-- normalization) of the E.164 number, so that the accounts holding a number reported by
-- messaging's SMS ledger are found without decrypting every phone. Not unique: a household may
-- share a number. The phone itself stays a ciphertext. Rows written before this migration have
-- a phone and no index, and SQL cannot compute one (the key is outside the database): identity
-- fills them in when it starts, before it serves (store::accounts::backfill_phone_index).
ALTER TABLE users ADD COLUMN phone_bidx bytea;
CREATE INDEX users_phone_bidx ON users (phone_bidx) WHERE phone_bidx IS NOT NULL;

-- communication_preferences.sms_notifications_changed_at: when the sms_notifications decision
-- was last made, by the user (UpdateCommunicationPreferences, registration) or by messaging's
-- ledger (ApplySmsConsent, at the ledger's change time). A ledger change older than this is
-- ignored: deliveries are not ordered, and a late STOP must not undo a newer choice. Rows that
-- exist already have no known time (NULL): the next ledger change applies to them.
ALTER TABLE communication_preferences ADD COLUMN sms_notifications_changed_at timestamptz;
ALTER TABLE communication_preferences ALTER COLUMN sms_notifications_changed_at SET DEFAULT now();
