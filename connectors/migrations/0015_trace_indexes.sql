-- What `GET /v1/events/{id}/trace` looks up by an event's id or trace id: without these, every
-- trace read three tables whole.
CREATE INDEX IF NOT EXISTS inventory_movements_cause ON inventory_movements (cause_event_id);
CREATE INDEX IF NOT EXISTS notification_outbox_trace ON notification_outbox (trace_id);
CREATE INDEX IF NOT EXISTS dlq_redrives_event ON dlq_redrives (event_id);
