-- Seconds until the earliest open delivery of an enabled endpoint becomes
-- due (negative when one is overdue), on the database's clock; NULL when
-- nothing is open. One index probe per endpoint.
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
