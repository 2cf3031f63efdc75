-- The delivery of the message with event_id $1 to endpoint $2, with its
-- status and tenant (a message has at most one per endpoint).
SELECT d.id, d.status, d.tenant_id
FROM outbox.deliveries d
JOIN outbox.messages m ON m.id = d.message_id
WHERE m.event_id = $1 AND d.endpoint_id = $2
