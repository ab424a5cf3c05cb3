-- A claim is inserted, then updated once (pending -> done). Free room in each page lets that
-- update stay on the page (a HOT update: no index entry, far less WAL).
ALTER TABLE ingest_claims SET (fillfactor = 70);
