-- Delivery $1's id, status and tenant.
SELECT d.id, d.status, d.tenant_id FROM outbox.deliveries d WHERE d.id = $1
