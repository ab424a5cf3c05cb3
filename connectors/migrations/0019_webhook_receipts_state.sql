-- Webhook receipts in two phases (issue 17): a delivery is `pending` while its effect is being
-- written and `done` once it is. A pending claim older than a stale age (its request crashed or
-- was cut off) may be taken over by the sender's retry; a done one is a replay.
ALTER TABLE webhook_receipts
    ADD COLUMN state text NOT NULL DEFAULT 'done' CHECK (state IN ('pending', 'done'));
