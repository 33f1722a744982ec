-- Identity's database. PHI columns (names, date of birth, email, phone) are plaintext until the
-- keys issue moves them under envelope encryption with a blind index for email.

CREATE TABLE users (
    id                        uuid PRIMARY KEY,
    role                      text NOT NULL CHECK (role IN ('patient', 'provider', 'staff', 'billing', 'admin')),
    status                    text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'terminated')),
    email                     text NOT NULL,                 -- lower-cased
    email_verified_at         timestamptz,
    phone                     text,                          -- E.164
    phone_verified_at         timestamptz,
    given_name                text NOT NULL,
    family_name               text NOT NULL,
    date_of_birth             date,
    time_zone                 text NOT NULL DEFAULT 'UTC',
    password_hash             text NOT NULL,                 -- argon2id PHC string
    password_changed_at       timestamptz NOT NULL DEFAULT now(),
    password_change_required  boolean NOT NULL DEFAULT false,
    totp_secret               bytea,                         -- active TOTP secret
    totp_pending_secret       bytea,                         -- enrolled, not yet confirmed
    totp_last_step            bigint,                        -- last accepted time step (replay guard)
    status_reason             text,
    status_changed_at         timestamptz,
    status_changed_by         uuid,
    -- Tokens issued before this instant are invalid (password reset, suspension, termination).
    sessions_revoked_before   timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);

-- Short-lived single-use codes proving control of an email or phone.
CREATE TABLE verification_codes (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel     text NOT NULL CHECK (channel IN ('email', 'phone')),
    destination text NOT NULL,                 -- the address the code was sent to
    code_hash   bytea NOT NULL,                -- SHA-256 of the code
    attempts    integer NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verification_codes_user ON verification_codes (user_id, channel, created_at DESC);

CREATE TABLE consents (
    user_id               uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    terms_version         text,
    terms_accepted_at     timestamptz,
    privacy_version       text,
    privacy_accepted_at   timestamptz,
    marketing_opt_in      boolean NOT NULL DEFAULT false,
    marketing_updated_at  timestamptz,
    sms_opt_in            boolean NOT NULL DEFAULT false,
    sms_updated_at        timestamptz
);

-- Every consent decision ever made, in order (the consents row is the latest state).
CREATE TABLE consent_events (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('terms', 'privacy', 'marketing', 'sms')),
    value       text NOT NULL,                 -- version accepted, or 'true'/'false'
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_user ON consent_events (user_id, created_at);

CREATE TABLE communication_preferences (
    user_id              uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    email_notifications  boolean NOT NULL DEFAULT true,
    sms_notifications    boolean NOT NULL DEFAULT false,
    push_notifications   boolean NOT NULL DEFAULT true,
    language             text NOT NULL DEFAULT 'en-US',
    quiet_hours_start    smallint NOT NULL DEFAULT 0 CHECK (quiet_hours_start BETWEEN 0 AND 23),
    quiet_hours_end      smallint NOT NULL DEFAULT 0 CHECK (quiet_hours_end BETWEEN 0 AND 23),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),   -- last token issuance (login/refresh)
    expires_at    timestamptz NOT NULL,                 -- absolute lifetime
    revoked_at    timestamptz,
    revoke_reason text,
    ip_address    text,
    user_agent    text,
    auth_methods  text[] NOT NULL,                      -- RFC 8176: pwd, otp, rc, pin
    device_id     uuid,
    password_change_required boolean NOT NULL DEFAULT false
);
CREATE INDEX sessions_user ON sessions (user_id, created_at DESC);

-- Rotating refresh tokens, stored only as SHA-256 hashes. A spent token presented again
-- revokes its session.
CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    session_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    spent_at    timestamptz
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Failed-login accounting, per account (key 'acct:' || sha256(lower(email)), whether or not
-- the account exists, so that lockout reveals nothing) and per source address ('src:' || ip).
CREATE TABLE login_throttle (
    key                   text PRIMARY KEY,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    total_failures        bigint NOT NULL DEFAULT 0,
    window_start          timestamptz NOT NULL DEFAULT now(),   -- start of the hourly window
    window_failures       integer NOT NULL DEFAULT 0,
    locked_until          timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Pending second-factor challenges after a correct password.
CREATE TABLE mfa_challenges (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    attempts    integer NOT NULL DEFAULT 0,
    ip_address  text,
    user_agent  text,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE recovery_codes (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, code_hash)
);

-- Device-bound PINs: the device keeps a secret; the PIN alone is useless elsewhere.
CREATE TABLE device_pins (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_name      text NOT NULL,
    secret_hash      bytea NOT NULL,          -- SHA-256 of the device secret
    pin_hash         text NOT NULL,           -- argon2id PHC string
    failed_attempts  integer NOT NULL DEFAULT 0,
    revoked_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz
);
CREATE INDEX device_pins_user ON device_pins (user_id);

CREATE TABLE password_resets (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Feed of revocations for other services (IdentityInternal.ListRevocations).
CREATE TABLE revocations (
    id          bigserial PRIMARY KEY,
    session_id  uuid,
    user_id     uuid,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((session_id IS NULL) <> (user_id IS NULL))
);
CREATE INDEX revocations_time ON revocations (revoked_at);
