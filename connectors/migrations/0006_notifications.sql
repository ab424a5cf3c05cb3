-- The notification outbox: one row per (event, channel, recipient), written before the message is
-- handed to the channel and updated with the outcome. A row already SENT is never sent again
-- (redelivery, restarts and replays); a row left SENDING by a crash is sent once more, with the
-- same Message-ID, so the only possible repeat is recognisable.
CREATE TABLE notification_outbox (
    event_id      uuid NOT NULL,
    channel       text NOT NULL CHECK (channel IN ('EMAIL', 'SMS', 'PUSH')),
    recipient     text NOT NULL,
    user_id       text NOT NULL,
    kind          text NOT NULL,
    status        text NOT NULL CHECK (status IN ('SENDING', 'SENT', 'FAILED', 'SKIPPED')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    message_id    text,
    trace_id      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    PRIMARY KEY (event_id, channel, recipient)
);
CREATE INDEX notification_outbox_user ON notification_outbox (user_id, created_at);
