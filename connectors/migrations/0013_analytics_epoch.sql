-- The analytics window stage's epoch: its table is `analytics` (epoch 0) or `analytics-e<N>`.
-- `mohallamart analytics replay` moves it on, so every analytics worker, on any host, starts
-- the replay from an empty table (a new changelog topic, new local stores): none can read a
-- store left from before the replay.
CREATE TABLE analytics_epoch (
    id     integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch  integer NOT NULL DEFAULT 0 CHECK (epoch >= 0)
);
INSERT INTO analytics_epoch (id, epoch) VALUES (1, 0);
