-- Scheduled jobs: one row per run, keyed by (job, cutoff). The run is a cleanup event on the
-- cleanup topic; however often that event is produced (two workers, an operator running the job
-- again for the same period) or replayed, it is recorded once and removes rows once.
CREATE TABLE job_runs (
    job           text NOT NULL,
    cutoff        timestamptz NOT NULL,
    event_id      uuid NOT NULL,
    triggered_by  text NOT NULL,
    targets       text[] NOT NULL DEFAULT '{}',
    occurred_at   timestamptz NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    rows_removed  bigint NOT NULL DEFAULT 0,
    removed       jsonb NOT NULL DEFAULT '{}',
    repeats       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job, cutoff)
);
CREATE INDEX job_runs_finished ON job_runs (job, finished_at);
