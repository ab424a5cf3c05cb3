-- API keys (stored only as hashes) and the ingest dedup claims.
-- Neither is a projection of the log: a replay never rebuilds them.

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,                 -- the public part, shown in listings
    key_hash    bytea NOT NULL UNIQUE,            -- sha256 of the whole key
    name        text NOT NULL,
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['ingest', 'read', 'admin']::text[]),
    principal   text NOT NULL CHECK (principal = 'admin' OR principal ~ '^(shop|user):.+$'),
    rate_per_s  integer CHECK (rate_per_s > 0),   -- events per second; NULL: the default
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE ingest_claims (
    event_id    uuid PRIMARY KEY,
    body_hash   bytea NOT NULL,                   -- the event as posted: same id, other body -> 409
    event_type  text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'done')),
    topic       text,
    "partition" integer,
    "offset"    bigint,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz
);
CREATE INDEX ingest_claims_claimed_at ON ingest_claims (claimed_at);
