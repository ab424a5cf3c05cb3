-- The marketplace's state: projections of the event topics, written by the `projections` role.
-- Every entity row carries its version: the (occurred_at, event id) of the last event applied to
-- it. A write applies only when the event's version is greater (an older event never overwrites a
-- newer one, an event applied twice changes nothing). Effects keyed by event id (movements, audit)
-- are inserted ON CONFLICT DO NOTHING.

CREATE TABLE users (
    user_id       text PRIMARY KEY,
    name          text NOT NULL,
    email         text NOT NULL,
    phone         text,
    role          text NOT NULL,
    preferences   jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('ACTIVE', 'DELETED')),
    deleted_reason text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    version_at    timestamptz NOT NULL,
    version_id    uuid NOT NULL
);

CREATE TABLE sessions (
    session_id    text PRIMARY KEY,
    user_id       text NOT NULL,
    platform      text,
    device        text,
    started_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    ended_at      timestamptz,
    end_reason    text,
    version_at    timestamptz NOT NULL,
    version_id    uuid NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE shops (
    shop_id           text PRIMARY KEY,
    owner_user_id     text NOT NULL,
    name              text NOT NULL,
    description       text,
    category          text,
    phone             text,
    address           jsonb NOT NULL,
    lat               double precision,
    lng               double precision,
    delivery_radius_m integer,
    accepting_orders  boolean NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    version_at        timestamptz NOT NULL,
    version_id        uuid NOT NULL
);

-- One application per shop (the shopkeeper topic is keyed by shop id).
CREATE TABLE shopkeepers (
    shop_id        text PRIMARY KEY,
    shopkeeper_id  text NOT NULL,
    user_id        text NOT NULL,
    business_name  text,
    phone          text,
    email          text,
    gstin          text,
    fssai_license  text,
    documents      jsonb NOT NULL DEFAULT '[]',
    status         text NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
    decided_by     text,
    decision_note  text,
    applied_at     timestamptz NOT NULL,
    decided_at     timestamptz,
    version_at     timestamptz NOT NULL,
    version_id     uuid NOT NULL
);

-- Product categories, as products name them.
CREATE TABLE categories (
    category       text PRIMARY KEY,
    first_seen_at  timestamptz NOT NULL
);

CREATE TABLE products (
    product_id    text PRIMARY KEY,
    shop_id       text NOT NULL,
    name          text NOT NULL,
    description   text,
    category      text,
    price_paise   bigint NOT NULL CHECK (price_paise >= 0),
    mrp_paise     bigint,
    unit          text,
    image_url     text,
    status        text NOT NULL CHECK (status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED')),
    -- stock is written only from product.stock_changed (the stock role's decisions), guarded by
    -- that event's `sequence` (the product's stock version), not by the entity version
    stock         integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
    stock_seq     bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    version_at    timestamptz NOT NULL,
    version_id    uuid NOT NULL
);
CREATE INDEX products_shop ON products (shop_id);

CREATE TABLE orders (
    order_id           text PRIMARY KEY,
    shop_id            text NOT NULL,
    user_id            text NOT NULL,
    status             text NOT NULL CHECK (status IN
                         ('PENDING', 'PROCESSING', 'COMPLETED', 'CANCELLED', 'REJECTED', 'REFUNDED')),
    total_paise        bigint NOT NULL,
    delivery_fee_paise bigint,
    payment_method     text,
    payment_reference  text,
    delivery_address   jsonb,
    note               text,
    status_reason      text,               -- why it was rejected, cancelled or refunded
    refund_paise       bigint,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version_at         timestamptz NOT NULL,
    version_id         uuid NOT NULL
);
CREATE INDEX orders_user ON orders (user_id);
CREATE INDEX orders_shop ON orders (shop_id);

CREATE TABLE order_items (
    order_id          text NOT NULL REFERENCES orders ON DELETE CASCADE,
    line              integer NOT NULL,
    product_id        text NOT NULL,
    name              text,
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_paise  bigint NOT NULL,
    returned_quantity integer NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line)
);

-- One row per stock change, from product.stock_changed (its deterministic id is the key).
CREATE TABLE inventory_movements (
    event_id        uuid PRIMARY KEY,
    product_id      text NOT NULL,
    shop_id         text NOT NULL,
    delta           integer NOT NULL,
    stock_after     integer NOT NULL CHECK (stock_after >= 0),
    reason          text NOT NULL,
    order_id        text,
    cause_event_id  uuid NOT NULL,
    cause_type      text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    sequence        bigint NOT NULL DEFAULT 0   -- the product's stock version after this change
);
CREATE INDEX inventory_movements_product ON inventory_movements (product_id, occurred_at);

-- One row per state change of an entity.
CREATE TABLE audit_log (
    event_id     uuid NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    from_status  text,
    to_status    text NOT NULL,
    event_type   text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, entity_type, entity_id)
);
CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id, occurred_at);
CREATE INDEX audit_log_occurred_at ON audit_log (occurred_at);
