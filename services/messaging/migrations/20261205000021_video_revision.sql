-- Revisions of video visits (VideoVisit.revision): scheduling numbers every change it makes to
-- an appointment, so that a delivery its outbox retried after a later change was applied is
-- recognised as older and ignored. 0 is "unversioned": what visits stored before have, and
-- what callers from before revisions send (always applied, never lowering the stored one).
ALTER TABLE video_visits
    ADD COLUMN revision bigint NOT NULL DEFAULT 0 CHECK (revision >= 0);
