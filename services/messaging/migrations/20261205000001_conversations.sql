-- Messaging: conversations, their ordered events (messages, retractions, read receipts), read
-- positions and blocks. Subjects and bodies are ciphertexts under the data key of the
-- conversation's crypto subject (the patient for a care conversation, the conversation itself
-- for a staff one); ids, sequence numbers and instants are in clear.

CREATE TABLE conversations (
    id                uuid PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('care', 'staff')),
    -- Care conversations: the patient.
    patient_id        uuid,
    -- Whose data key seals this conversation's content: the patient, or the conversation's
    -- own id for a staff conversation.
    crypto_subject    uuid NOT NULL,
    -- The subject line, sealed (row = the conversation id).
    subject           bytea NOT NULL,
    created_by        uuid NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The newest sequence number. A new event takes `UPDATE ... SET last_seq = last_seq + 1
    -- RETURNING last_seq`: the row lock is held to the commit, so the events of one
    -- conversation commit in sequence order and a reader that sees seq N has every n < N.
    last_seq          bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_activity_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'care') = (patient_id IS NOT NULL)),
    CHECK (kind = 'staff' OR crypto_subject = patient_id)
);
CREATE INDEX conversations_patient ON conversations (patient_id, last_activity_at DESC, id)
    WHERE patient_id IS NOT NULL;

-- Members of staff conversations (care conversations take theirs from records' care team).
CREATE TABLE conversation_members (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    user_id          uuid NOT NULL,
    added_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_user ON conversation_members (user_id);

-- Who has taken part in a care conversation (created it, sent, read): how a care-team member's
-- ListConversations finds the conversations of their patients without asking records for
-- every patient. Membership itself is always checked with records.
CREATE TABLE conversation_participants (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    user_id          uuid NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_participants_user ON conversation_participants (user_id);

-- Everything that happens in a conversation, in one gap-free order.
CREATE TABLE conversation_events (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    seq              bigint NOT NULL CHECK (seq >= 1),
    kind             text NOT NULL CHECK (kind IN ('message', 'retraction', 'read')),
    actor_id         uuid NOT NULL,
    -- message: the message; retraction: the retracted message.
    message_id       uuid,
    -- read: the actor's read position.
    read_seq         bigint,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq),
    CHECK ((kind = 'read') = (read_seq IS NOT NULL)),
    CHECK ((kind = 'read') = (message_id IS NULL))
);

CREATE TABLE messages (
    id                 uuid PRIMARY KEY,
    conversation_id    uuid NOT NULL REFERENCES conversations (id),
    seq                bigint NOT NULL,
    sender_id          uuid NOT NULL,
    -- The client's id for the message: a retry of the same send finds the stored message.
    client_message_id  text NOT NULL,
    -- The body, sealed (row = the message id); NULL once retracted (the key material of the
    -- body is gone with it, the trace stays).
    body               bytea,
    sent_at            timestamptz NOT NULL DEFAULT now(),
    retracted_at       timestamptz,
    UNIQUE (conversation_id, sender_id, client_message_id),
    UNIQUE (conversation_id, seq),
    CHECK ((retracted_at IS NULL) = (body IS NOT NULL))
);

-- A user's read position in a conversation (never moves backwards).
CREATE TABLE read_states (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    user_id          uuid NOT NULL,
    read_seq         bigint NOT NULL CHECK (read_seq >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id)
);

-- A sender blocked in a conversation by staff.
CREATE TABLE blocks (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    user_id          uuid NOT NULL,
    blocked_by       uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    lifted_by        uuid,
    lifted_at        timestamptz,
    PRIMARY KEY (conversation_id, user_id)
);

-- Accounts identity reports suspended or terminated (its outbox's AccountStatusChanged): they
-- cannot send, and their streams are closed. `changed_at` orders deliveries that arrive out of
-- order.
CREATE TABLE account_states (
    user_id     uuid PRIMARY KEY,
    active      boolean NOT NULL,
    changed_at  timestamptz NOT NULL
);

-- Abuse reports and their review.
CREATE TABLE reports (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    message_id       uuid NOT NULL REFERENCES messages (id),
    reported_by      uuid NOT NULL,
    sender_id        uuid NOT NULL,
    reason           text NOT NULL,
    -- Sealed under the conversation's crypto subject (row = the report id); may be empty.
    details          bytea NOT NULL,
    status           text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'dismissed', 'actioned')),
    action           text,
    resolved_by      uuid,
    resolved_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, reported_by),
    CHECK ((status = 'open') = (resolved_at IS NULL))
);
CREATE INDEX reports_status ON reports (status, created_at, id);
