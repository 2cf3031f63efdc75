-- The first attempt at delivering message $1, once there is one.
SELECT a.status_code, a.error, a.duration_ms, coalesce(a.response_excerpt, '') AS response_excerpt
FROM outbox.deliveries d
JOIN outbox.attempts a ON a.delivery_id = d.id
WHERE d.message_id = $1
ORDER BY a.attempt
LIMIT 1
