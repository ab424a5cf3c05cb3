-- What the read side (the cache and search roles) needs from the projections.

-- Events the projections dead-lettered (an illegal transition, a record that kept failing): the
-- cache and search roles wait for the projections to apply an event before they render its
-- entity; an event found here will never be applied, so they do not wait for it.
CREATE TABLE projection_refusals (
    event_id     uuid PRIMARY KEY,
    event_type   text NOT NULL,
    error_class  text NOT NULL,
    reason       text NOT NULL,
    refused_at   timestamptz NOT NULL DEFAULT now()
);

-- Typesense collections behind each alias: the one searched (`live`) and, during a reindex, the
-- one being built (`building`), which the search role writes too. Changed only under the search
-- lock (see connectors/typesense.py).
CREATE TABLE search_collections (
    alias      text PRIMARY KEY,
    live       text NOT NULL,
    building   text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
