-- Seconds until the earliest open delivery becomes due (negative when one is
-- overdue), measured on the database's clock; NULL when nothing is open.
-- The epochs are subtracted rather than the timestamps: before PostgreSQL 17
-- 'infinity' - now() is an error, while its epoch is simply Infinity.
SELECT (extract(epoch FROM d.next_attempt_at) - extract(epoch FROM now()))::float8 AS due_in_secs
FROM outbox.deliveries d
WHERE d.status IN ('pending', 'in_flight')
  AND EXISTS (SELECT 1 FROM outbox.endpoints e WHERE e.id = d.endpoint_id AND e.enabled)
ORDER BY d.next_attempt_at, d.id
LIMIT 1
