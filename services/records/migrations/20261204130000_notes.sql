-- Clinical notes: drafts its author changes, then signed and immutable; corrections are
-- addenda. Title, text and labels are sealed under the patient's data key (row = the note's
-- id and version for a note, the addendum's id for an addendum).

CREATE TABLE notes (
    id              uuid PRIMARY KEY,
    patient_id      uuid NOT NULL,
    author_id       uuid NOT NULL,
    status          text NOT NULL CHECK (status IN ('draft', 'signed')),
    -- The sealed StoredNote (title, text, labels) of the current version.
    body            bytea NOT NULL,
    version         bigint NOT NULL CHECK (version >= 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    signed_at       timestamptz,
    content_sha256  bytea,
    CHECK ((status = 'signed') = (signed_at IS NOT NULL AND content_sha256 IS NOT NULL))
);
CREATE INDEX notes_patient ON notes (patient_id, created_at DESC, id DESC);

CREATE TABLE note_addenda (
    id         uuid PRIMARY KEY,
    note_id    uuid NOT NULL REFERENCES notes (id),
    author_id  uuid NOT NULL,
    body       bytea NOT NULL,
    signed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX note_addenda_note ON note_addenda (note_id, signed_at, id);

-- A signed note never changes and no note or addendum is deleted: for every role, the owner
-- included (a superuser's maintenance can set session_replication_role = replica).
CREATE FUNCTION records_notes_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION '% rows are never deleted', TG_TABLE_NAME USING ERRCODE = '42501';
    END IF;
    IF TG_TABLE_NAME = 'note_addenda' THEN
        RAISE EXCEPTION 'an addendum never changes' USING ERRCODE = '42501';
    END IF;
    IF OLD.status = 'signed' THEN
        RAISE EXCEPTION 'a signed note never changes' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER notes_immutable BEFORE UPDATE OR DELETE ON notes
    FOR EACH ROW EXECUTE FUNCTION records_notes_immutable();
CREATE TRIGGER note_addenda_immutable BEFORE UPDATE OR DELETE ON note_addenda
    FOR EACH ROW EXECUTE FUNCTION records_notes_immutable();
