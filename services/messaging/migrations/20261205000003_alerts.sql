-- New-message alerts, debounced: a message puts its conversation in alert_queue (once: a
-- conversation already waiting keeps its due time); when due, the alerter notifies each
-- participant with unread messages from others, unless they were alerted and have not read
-- since (alert_marks).
CREATE TABLE alert_queue (
    conversation_id  uuid PRIMARY KEY REFERENCES conversations (id),
    due_at           timestamptz NOT NULL
);
CREATE INDEX alert_queue_due ON alert_queue (due_at);

CREATE TABLE alert_marks (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    user_id          uuid NOT NULL,
    -- The conversation's last sequence number when the user was alerted.
    alerted_seq      bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
