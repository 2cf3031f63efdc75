-- Seconds until the earliest open delivery becomes due (negative when one is
-- overdue), measured on the database's clock; NULL when nothing is open.
SELECT extract(epoch FROM d.next_attempt_at - now())::float8 AS due_in_secs
FROM outbox.deliveries d
WHERE d.status IN ('pending', 'in_flight')
  AND EXISTS (SELECT 1 FROM outbox.endpoints e WHERE e.id = d.endpoint_id AND e.enabled)
ORDER BY d.next_attempt_at, d.id
LIMIT 1
