-- Key rotation with an overlap window (issue 17): `mohallamart keys rotate` makes a new key like
-- the old one and gives the old one an end; until then both work, so clients switch at leisure.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
