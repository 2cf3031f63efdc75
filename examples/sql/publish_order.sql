-- An order and its order.created event in one transaction, from SQL alone:
-- the event exists if and only if the order does. The data-modifying CTE
-- hands the new order's id to the event in the same statement. Run again
-- with the same idempotency_key (a retry), it inserts nothing and returns
-- no row: the first run's order and event stand.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v idempotency_key=checkout-7f3a \
--        -v customer=alice -v total_cents=1999 -f examples/sql/publish_order.sql
BEGIN;

WITH new_order AS (
    INSERT INTO orders (idempotency_key, customer, total_cents)
    VALUES (:'idempotency_key', :'customer', :'total_cents')
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, customer, total_cents
)
INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
SELECT 'order-' || id || '-created',           -- one order, one event: webhook-id
       'order.created',
       jsonb_build_object('type', 'order.created',
                          'data', jsonb_build_object('order_id', id, 'customer', customer,
                                                     'total_cents', total_cents)),
       'order-' || id                          -- this order's events go out in order
FROM new_order
RETURNING event_id;

COMMIT;
