-- The tenant of delivery $1 (no row: no such delivery).
SELECT tenant_id FROM outbox.deliveries WHERE id = $1
