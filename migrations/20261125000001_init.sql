-- Core schema: events stored once per (topic, event_id), exact per-topic counters sharded so
-- concurrent writers never queue on one row, and the record of processed stream messages that
-- makes a redelivered message count once.

-- Every distinct event, exactly once: (topic, event_id) is the key. `id` is the ingest order,
-- the tie-breaker of the keyset pagination of GET /events (newest timestamp first).
CREATE TABLE events (
    topic       text        NOT NULL,
    event_id    text        NOT NULL,
    ts          timestamptz NOT NULL,
    source      text        NOT NULL,
    payload     jsonb       NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    -- W3C trace context of the publish (NATS header `traceparent`), when it carried one.
    traceparent text,
    id          bigint GENERATED ALWAYS AS IDENTITY,
    CONSTRAINT events_pkey PRIMARY KEY (topic, event_id)
);
-- GET /events: ORDER BY ts DESC, id DESC with optional topic / source / time-range filters.
CREATE INDEX events_ts_id_idx ON events (ts, id);
CREATE INDEX events_topic_ts_id_idx ON events (topic, ts, id);
CREATE INDEX events_source_ts_id_idx ON events (source, ts, id);
-- RETENTION: find old rows by ingest time. BRIN: tiny and nearly free to maintain, since
-- rows arrive in stored_at order.
CREATE INDEX events_stored_at_brin ON events USING brin (stored_at);

-- One row per JetStream stream incarnation. A deleted and re-created stream restarts its
-- sequence numbers at 1, so processed messages are keyed by (stream incarnation, sequence).
-- `floor_seq`: every sequence <= floor_seq of this incarnation has been processed; the
-- individual records below it have been compacted away.
CREATE TABLE streams (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text   NOT NULL,
    created_ns  text   NOT NULL,
    floor_seq   bigint NOT NULL DEFAULT 0,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT streams_name_created_key UNIQUE (name, created_ns)
);

-- Stream messages already counted (above the stream's floor_seq).
CREATE TABLE processed_messages (
    stream_id   integer NOT NULL REFERENCES streams (id),
    stream_seq  bigint  NOT NULL,
    PRIMARY KEY (stream_id, stream_seq)
);

-- Exact counters per topic, split into shards: each worker adds to its own shard, so no
-- single hot row serializes writers. Totals are sums over shards.
CREATE TABLE topic_counters (
    topic            text     NOT NULL,
    shard            smallint NOT NULL,
    received         bigint   NOT NULL DEFAULT 0,
    unique_processed bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, shard)
);

-- Messages that could not be stored (undecodable, invalid): kept with their reason.
CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id   integer NOT NULL REFERENCES streams (id),
    stream_seq  bigint  NOT NULL,
    subject     text    NOT NULL,
    raw         bytea   NOT NULL,
    raw_size    integer NOT NULL,
    reason      text    NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set by `aggregator redrive` once the message has been published again.
    redriven_at timestamptz,
    CONSTRAINT dead_letters_stream_seq_key UNIQUE (stream_id, stream_seq)
);

CREATE TABLE dead_letter_counters (
    shard  smallint PRIMARY KEY,
    count  bigint NOT NULL DEFAULT 0
);

-- Messages JetStream delivered more than MAX_DELIVER times: each is tried alone once; one
-- that comes back after that (it crashed or stalled the process) is dead-lettered.
CREATE TABLE suspect_attempts (
    stream_id   integer NOT NULL,
    stream_seq  bigint  NOT NULL,
    attempts    integer NOT NULL,
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, stream_seq)
);
