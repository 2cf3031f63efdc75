-- The attempts of deliveries $1, in order.
SELECT a.delivery_id, a.attempt,
       to_char(a.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS started,
       a.duration_ms, a.status_code, a.error, left(a.response_excerpt, 1024) AS excerpt
FROM outbox.attempts a
WHERE a.delivery_id = ANY ($1)
ORDER BY a.delivery_id, a.attempt
