-- An endpoint's $2 most recent attempts, newest first, with the receiver's
-- answer (the first 1 KiB of the stored excerpt).
SELECT a.delivery_id, m.event_id, m.event_type, a.attempt,
       to_char(a.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS started,
       a.duration_ms, a.status_code, a.error, left(a.response_excerpt, 1024) AS excerpt
FROM outbox.deliveries d
JOIN outbox.attempts a ON a.delivery_id = d.id
JOIN outbox.messages m ON m.id = d.message_id
WHERE d.endpoint_id = $1
ORDER BY a.started_at DESC
LIMIT $2
