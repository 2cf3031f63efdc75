-- The business table of the examples: examples/app.rs, publish_order.sql
-- and docs/clients.md write an order and its event in one transaction.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f examples/sql/orders.sql
-- idempotency_key: the request's key (an Idempotency-Key header, say), the
-- same on every retry; unique, so a retried request cannot place a second
-- order, and so cannot send a second event.
CREATE TABLE IF NOT EXISTS orders (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text   NOT NULL UNIQUE,
    customer        text   NOT NULL,
    total_cents     bigint NOT NULL CHECK (total_cents > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
