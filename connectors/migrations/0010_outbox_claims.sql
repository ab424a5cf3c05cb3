-- Who is sending a notification, and since when. A row being sent (SENDING) belongs to the worker
-- process that claimed it: another one (the next owner of its partition after a rebalance, while
-- the last owner still finishes its batch) waits until it is settled or its claim is older than
-- the outbox's lease, so a message is never sent by two workers at once. Rows written before
-- this migration have no owner: free to claim.
ALTER TABLE notification_outbox ADD COLUMN claimed_by text;
ALTER TABLE notification_outbox ADD COLUMN claimed_at timestamptz;
