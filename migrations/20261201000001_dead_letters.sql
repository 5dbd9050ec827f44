-- The dead-letter store: records that can never become rows (undecodable,
-- or refused by the table's constraints). Inserted in the same transaction
-- as the batch they came with and the offsets that batch covers, so a record
-- is either in its table or here, exactly once.
CREATE TABLE IF NOT EXISTS sluice.dead_letters (
    id              bigserial   PRIMARY KEY,
    pipeline        text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    -- The record's Kafka timestamp, so a replay fills `@timestamp` columns.
    kafka_timestamp timestamptz,
    key             bytea,
    -- The raw value; for a value above max_record_bytes only its first
    -- max_record_bytes bytes (the error text gives the real length). NULL
    -- for a tombstone, or when the raw record could no longer be read back.
    value           bytea,
    -- [{"key": "...", "value": "..." | null | {"base64": "..."}}], in order.
    headers         jsonb       NOT NULL DEFAULT '[]',
    -- 'decode': refused before the database (JSON, UTF-8, type, range, size);
    -- 'data': refused by the database (SQLSTATE class 22 or 23).
    error_class     text        NOT NULL CHECK (error_class IN ('decode', 'data')),
    sqlstate        text,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    -- Set by `sluice dlq replay` in the transaction that wrote the row.
    replayed_at     timestamptz
);

CREATE INDEX IF NOT EXISTS dead_letters_pipeline_id ON sluice.dead_letters (pipeline, id);
-- A record re-delivered after a fence or a crash is dead-lettered once.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_record
    ON sluice.dead_letters (pipeline, topic, partition, "offset");
