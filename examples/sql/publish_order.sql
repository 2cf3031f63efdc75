-- An order and its order.created event in one transaction, from SQL alone:
-- the event exists if and only if the order does. The data-modifying CTE
-- hands the new order's id to the event in the same statement.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v customer=alice -v total_cents=1999 \
--        -f examples/sql/publish_order.sql
BEGIN;

WITH new_order AS (
    INSERT INTO orders (customer, total_cents)
    VALUES (:'customer', :'total_cents')
    RETURNING id, customer, total_cents
)
INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
SELECT 'order-' || id || '-created',           -- your idempotency key: webhook-id
       'order.created',
       jsonb_build_object('type', 'order.created',
                          'data', jsonb_build_object('order_id', id, 'customer', customer,
                                                     'total_cents', total_cents)),
       'order-' || id                          -- this order's events go out in order
FROM new_order
RETURNING event_id;

COMMIT;
