-- Where the window stage stands, per by-key partition, in the tables of this schema: every
-- by-key record up to `applied_offset` is applied, and of the next one the items up to the
-- router positions in `routed` (source partition -> [offset, index]: a batch may write its
-- state in the middle of a bundle). Written in the same transaction as each batch's rows, so it
-- never runs ahead of or behind them. `mohallamart rebuild analytics` keeps one in its shadow
-- schema the same way, and its cut-over brings the shadow exactly here.
CREATE TABLE analytics_positions (
    topic            text    NOT NULL,  -- the by-key topic (its namespace's)
    stage_partition  integer NOT NULL,
    applied_offset   bigint  NOT NULL,
    routed           jsonb   NOT NULL DEFAULT '{}',
    PRIMARY KEY (topic, stage_partition)
);
