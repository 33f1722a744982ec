-- Documents of the chart, stored in encrypted chunks as they were uploaded. What a document is
-- (title, content type, size, SHA-256, labels) is sealed too: a content hash would let anyone
-- with a candidate file confirm a guess.
CREATE TABLE documents (
    id           uuid PRIMARY KEY,
    patient_id   uuid NOT NULL,
    -- The sealed DocumentInfo (row = the document's id).
    info         bytea NOT NULL,
    chunks       integer NOT NULL CHECK (chunks >= 1),
    uploaded_by  uuid NOT NULL,
    source       text NOT NULL CHECK (source IN ('patient', 'provider', 'staff', 'integration')),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_patient ON documents (patient_id, created_at DESC, id DESC);

CREATE TABLE document_chunks (
    document_id  uuid NOT NULL,
    seq          integer NOT NULL CHECK (seq >= 0),
    -- Sealed (row = '<document id>/<seq>').
    data         bytea NOT NULL,
    PRIMARY KEY (document_id, seq)
);
