-- What `mohallamart dlq redrive` did with each dead-letter record: a record is redriven once
-- (a redriven copy that fails again is a new dead-letter record, listed again, never looped).
-- Operator state, not a projection: a replay never rebuilds it.
CREATE TABLE dlq_redrives (
    dlq_topic    text NOT NULL,
    "partition"  integer NOT NULL,
    "offset"     bigint NOT NULL,
    event_id     text,
    outcome      text NOT NULL CHECK (outcome IN ('redriven', 'superseded')),
    detail       text,
    done_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, "partition", "offset")
);
