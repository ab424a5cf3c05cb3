-- Where the projections stand, per topic partition (their redrive topics included): every record
-- before `next_offset` has been applied (or refused) in the tables of this schema. Written in the
-- same transaction as each batch, so it never runs ahead of or behind the rows. A rebuild
-- (`mohallamart rebuild postgres`) keeps one in its shadow schema the same way: its checkpoint,
-- and, after a cut-over, the live position of the tables it built.
CREATE TABLE projection_positions (
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint  NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (topic, partition)
);
