-- The analytics window stage's epoch, per consumer group (`<WORKER_APP_PREFIX>-analytics`): its
-- table is `analytics` (epoch 0) or `analytics-e<N>`. `mohallamart analytics replay` moves it
-- on, so every analytics worker of the group, on any host, starts the replay from an empty
-- table (a new changelog topic, new local stores): none can read a store left from before.
CREATE TABLE analytics_epochs (
    group_id  text    PRIMARY KEY,
    epoch     integer NOT NULL CHECK (epoch >= 0)
);
