-- Analytics windows (issue 15): a shop's sales per 1-minute (UTC), 1-hour and 1-day (Asia/Kolkata)
-- window, in event time. A row is the window's current value until `final`; once final it never
-- changes again. Average order value is read as revenue_paise / orders.
CREATE TABLE analytics_sales (
    period            text        NOT NULL CHECK (period IN ('1m', '1h', '1d')),
    shop_id           text        NOT NULL,
    window_start      timestamptz NOT NULL,
    window_end        timestamptz NOT NULL,
    revenue_paise     bigint      NOT NULL DEFAULT 0,
    orders            integer     NOT NULL DEFAULT 0,
    items             integer     NOT NULL DEFAULT 0,
    cancelled_paise   bigint      NOT NULL DEFAULT 0,
    cancelled_orders  integer     NOT NULL DEFAULT 0,
    refunded_paise    bigint      NOT NULL DEFAULT 0,
    final             boolean     NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, period, window_start),
    CHECK (window_end > window_start)
);
