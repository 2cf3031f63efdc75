-- Seconds until the earliest open delivery of an enabled endpoint becomes
-- due (negative when one is overdue), on the database's clock; NULL when
-- nothing is open. One index probe per endpoint. The sidecar asks this
-- when it goes idle, so in notify mode ($2) it also records that it now
-- waits for producers' NOTIFY (outbox.waiting, worker $1) and will look
-- again within $3 seconds; rows of workers that missed their own promise
-- (crashed sidecars) go, or producers would NOTIFY for nobody forever.
-- Epochs are subtracted, not timestamps: before PostgreSQL 17
-- 'infinity' - now() is an error, while its epoch is simply Infinity.
WITH idle AS (
    INSERT INTO outbox.waiting (worker_id, stale_after)
    SELECT $1::text, now() + make_interval(secs => $3::float8) WHERE $2::boolean
    ON CONFLICT (worker_id) DO UPDATE SET since = now(), stale_after = excluded.stale_after
), stale AS (
    DELETE FROM outbox.waiting w
    WHERE $2::boolean AND w.stale_after < now() AND w.worker_id <> $1::text
)
SELECT (extract(epoch FROM min(n.next_attempt_at)) - extract(epoch FROM now()))::float8 AS due_in_secs
FROM outbox.endpoints e
CROSS JOIN LATERAL (
    SELECT d.next_attempt_at
    FROM outbox.deliveries d
    WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'in_flight')
    ORDER BY d.next_attempt_at
    LIMIT 1
) n
WHERE e.enabled
