-- The processed record's foreign key checked (and key-share locked) the one `streams` row
-- once per message: a trigger and a row lock for every event stored. Stream rows are never
-- deleted, so the batch write checks its batch's stream ids once, at the start of its
-- transaction, instead (store::batch).
ALTER TABLE processed_messages DROP CONSTRAINT processed_messages_stream_id_fkey;
