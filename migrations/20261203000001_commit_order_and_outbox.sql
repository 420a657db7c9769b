-- The stream out (issue 16): events in the order their transactions committed.
--
-- `id` is assigned when a row is inserted, but transactions commit in another order: a reader
-- that takes "everything after id N" can pass over a row whose transaction commits later with
-- a smaller id. `xid` is the writing transaction's id. Every transaction with an id below the
-- oldest one still running (`pg_snapshot_xmin(pg_current_snapshot())`) has ended, so the rows
-- below that horizon never change again: a reader walking (xid, id) up to the horizon sees
-- every row once, in an order that never has a late arrival behind it (store::outbox).
--
-- Rows stored before this migration take its transaction's id (the default is stable, so it
-- is not evaluated per existing row and the table is not rewritten): they come first, in
-- ingest order.
ALTER TABLE events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_xid_id_idx ON events (xid, id);

-- Where the publisher of the stream out stands, per output stream: the last event published
-- (its commit-order position), the output stream's sequence that message got, and how many
-- events were published in all. It only moves forward, after the output stream acknowledged.
CREATE TABLE outbox_cursors (
    stream      text        PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT '0',
    id          bigint      NOT NULL DEFAULT 0,
    stream_seq  bigint      NOT NULL DEFAULT 0,
    published   bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
