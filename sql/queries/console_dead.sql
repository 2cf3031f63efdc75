-- The $2 most recently dead deliveries, of endpoint $1 (NULL: of all).
SELECT d.id, d.endpoint_id, m.event_id, m.event_type, d.tenant_id, d.attempts, d.last_status_code,
       d.last_error, to_char(d.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS died
FROM outbox.deliveries d
JOIN outbox.messages m ON m.id = d.message_id
WHERE d.status = 'dead' AND ($1::text IS NULL OR d.endpoint_id = $1)
ORDER BY d.updated_at DESC
LIMIT $2
