-- The tenant of endpoint $1 (no row: no such endpoint).
SELECT tenant_id FROM outbox.endpoints WHERE id = $1
