-- The tenant of endpoint $1 (no row: no such endpoint).
SELECT e.tenant_id FROM outbox.endpoints e WHERE e.id = $1
