-- Back-in-stock alerts the workflows role keeps: a user asked (product.stock_alert_requested) to
-- be told when a product is back. The next product.back_in_stock after the request notifies them
-- once: `notified_by` is that event, so a replay of it finds the same users again (and derives
-- the same notification ids), and a later one does not notify them a second time. Asking again
-- after being told arms the alert again.
CREATE TABLE stock_alerts (
    product_id    text NOT NULL,
    user_id       text NOT NULL,
    shop_id       text NOT NULL,
    requested_at  timestamptz NOT NULL,
    request_id    uuid NOT NULL,
    notified_by   uuid,
    notified_at   timestamptz,
    PRIMARY KEY (product_id, user_id)
);
CREATE INDEX stock_alerts_waiting ON stock_alerts (product_id) WHERE notified_by IS NULL;
