-- Seconds until the earliest open delivery of an enabled endpoint becomes
-- due (negative when one is overdue), on the database's clock; NULL when
-- nothing is open. One index probe per endpoint. The sidecar asks this
-- when it goes idle, so in notify mode ($2) it also records that it now
-- waits for producers' NOTIFY (outbox.waiting, worker $1).
WITH idle AS (
    INSERT INTO outbox.waiting (worker_id)
    SELECT $1::text WHERE $2::boolean
    ON CONFLICT (worker_id) DO UPDATE SET since = now()
)
SELECT extract(epoch FROM min(n.next_attempt_at) - now())::float8 AS due_in_secs
FROM outbox.endpoints e
CROSS JOIN LATERAL (
    SELECT d.next_attempt_at
    FROM outbox.deliveries d
    WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'in_flight')
    ORDER BY d.next_attempt_at
    LIMIT 1
) n
WHERE e.enabled
