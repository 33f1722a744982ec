-- Attachments: uploaded into a conversation, then sent with one message. The description (file
-- name, content type, size, hash) and every chunk are sealed under the conversation's crypto
-- subject; a retracted message's attachments lose their chunks.
CREATE TABLE attachments (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    uploaded_by      uuid NOT NULL,
    -- The AttachmentInfo message, sealed (row = the attachment id).
    info             bytea NOT NULL,
    chunks           integer NOT NULL CHECK (chunks >= 1),
    -- The declared SHA-256 under a keyed hash would be a blind index; the plain hash of the
    -- content is not stored: a retry of an upload is recognized by the idempotency key.
    message_id       uuid REFERENCES messages (id),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_message ON attachments (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX attachments_unsent ON attachments (conversation_id, uploaded_by) WHERE message_id IS NULL;

CREATE TABLE attachment_chunks (
    attachment_id  uuid NOT NULL REFERENCES attachments (id),
    seq            integer NOT NULL CHECK (seq >= 0),
    data           bytea NOT NULL,
    PRIMARY KEY (attachment_id, seq)
);
