-- Whether endpoint $1 exists, and its tenant.
SELECT e.tenant_id FROM outbox.endpoints e WHERE e.id = $1
