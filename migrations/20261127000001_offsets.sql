-- sluice's own schema. Rows and the source offsets they cover commit in the
-- same transaction, which is what makes delivery into Postgres exactly-once.
CREATE SCHEMA IF NOT EXISTS sluice;

CREATE TABLE IF NOT EXISTS sluice.offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    -- The offset of the next record to read (Kafka's convention): one past
    -- the last record that is in its table or was deliberately skipped.
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
