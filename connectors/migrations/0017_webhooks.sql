-- Webhooks from the external services (issue 17). Each delivery's id (Clerk's `svix-id`, Twilio's
-- `MessageSid` + status) is claimed here before its effect is written: the same delivery again
-- (a replay, or a retry of one applied) is refused and writes nothing.
CREATE TABLE webhook_receipts (
    source       text        NOT NULL,  -- 'clerk', 'twilio'
    delivery_id  text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX webhook_receipts_received ON webhook_receipts (received_at);

-- The SMS provider's delivery status of a message the notifications role sent (Twilio's status
-- callbacks: queued, sent, delivered, undelivered, failed), on its delivery-log row.
ALTER TABLE notification_outbox
    ADD COLUMN delivery_status text,
    ADD COLUMN delivery_error  text,
    ADD COLUMN delivery_at     timestamptz;
CREATE INDEX notification_outbox_message ON notification_outbox (message_id)
    WHERE message_id IS NOT NULL;
