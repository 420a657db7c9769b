-- Exactness under faults (issue 11).

-- A stream incarnation is identified by a token the aggregator stamps into the stream's own
-- configuration (`incarnation`), not by its `created` time: nodes of a cluster, a restore or
-- an upgrade can report another `created` for the same stream while its sequences continue.
-- `created_ns` stays for rows registered before this migration (adopted on first sight).
--
-- `id` is derived from (name, incarnation) instead of a sequence, so a WAL record's stream id
-- means the same incarnation in any database that knows it, and an id the database does not
-- know is detected instead of colliding with another incarnation's.
ALTER TABLE streams ALTER COLUMN id DROP IDENTITY;
ALTER TABLE streams ALTER COLUMN created_ns DROP NOT NULL;
ALTER TABLE streams ADD COLUMN incarnation text;
ALTER TABLE streams ADD CONSTRAINT streams_name_incarnation_key UNIQUE (name, incarnation);

-- Sequences folded into `floor_seq` without having been processed, because the stream no
-- longer holds them (purged, expired, deleted): compaction skips such gaps instead of
-- stopping at them forever. A copy of such a message can still arrive (from a replica's WAL,
-- written before the stream dropped it), so a sequence in a skipped range is checked against
-- `processed_messages` even though it is at or below the floor.
CREATE TABLE skipped_ranges (
    stream_id  integer NOT NULL REFERENCES streams (id),
    first_seq  bigint  NOT NULL,
    last_seq   bigint  NOT NULL,
    PRIMARY KEY (stream_id, first_seq),
    CHECK (first_seq <= last_seq)
);
