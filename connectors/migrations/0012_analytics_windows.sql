-- Analytics windows (issue 15), beside analytics_sales (0011): the panes of the hopping windows
-- (trending products, search terms), browsing sessions, late events and each window stage
-- partition's watermark. Rows are written by the analytics role only; values are set, never
-- added to (a write repeated after a crash or a replay changes nothing); a final row never changes.

-- One 5-minute pane (UTC) of a hopping aggregate: a 1-hour window every 5 minutes is the sum of
-- its 12 panes, and top-N is computed when read. `final`: every window holding the pane is final.
CREATE TABLE analytics_panes (
    aggregate     text        NOT NULL CHECK (aggregate IN ('trending', 'search_terms')),
    key           text        NOT NULL,   -- trending: '<shop id>/<product id>'; search terms: the text
    pane_start    timestamptz NOT NULL,
    shop_id       text,                   -- trending: the product's shop
    units         bigint      NOT NULL DEFAULT 0,
    orders        integer     NOT NULL DEFAULT 0,
    searches      integer     NOT NULL DEFAULT 0,
    clicks        integer     NOT NULL DEFAULT 0,
    final         boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate, pane_start, key)
);

-- One browsing session: open (current, replaced as it grows or merges) or final.
CREATE TABLE analytics_sessions (
    session_id          text        NOT NULL,
    first_at            timestamptz NOT NULL,
    last_at             timestamptz NOT NULL,
    day                 date        NOT NULL,  -- the Asia/Kolkata day of its first event
    shops               text[]      NOT NULL DEFAULT '{}',
    events              integer     NOT NULL DEFAULT 0,
    page_views          integer     NOT NULL DEFAULT 0,
    searches            integer     NOT NULL DEFAULT 0,
    clicks              integer     NOT NULL DEFAULT 0,
    add_to_cart         integer     NOT NULL DEFAULT 0,
    remove_from_cart    integer     NOT NULL DEFAULT 0,
    checkouts           integer     NOT NULL DEFAULT 0,
    purchases           integer     NOT NULL DEFAULT 0,
    converted           boolean     NOT NULL DEFAULT false,  -- searched and purchased
    abandoned_cart      boolean     NOT NULL DEFAULT false,  -- added to cart, nothing purchased
    abandoned_checkout  boolean     NOT NULL DEFAULT false,  -- checkout started, nothing purchased
    final               boolean     NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, first_at)
);
CREATE INDEX analytics_sessions_day ON analytics_sessions (day) WHERE final;

-- Events that came after their window was final: they changed nothing, and are listed here.
CREATE TABLE analytics_late (
    id            uuid        PRIMARY KEY,  -- UUIDv5 of the event id, the aggregate and the key
    event_id      text        NOT NULL,
    event_type    text        NOT NULL,
    aggregate     text        NOT NULL,
    key           text        NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    occurred_at   timestamptz NOT NULL,
    watermark     timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_late_recorded ON analytics_late (recorded_at);

-- Each window stage partition's watermark (the minimum over its source partitions), as of its
-- last batch: what is final up to where.
CREATE TABLE analytics_watermarks (
    stage_partition  integer     PRIMARY KEY,
    watermark        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
