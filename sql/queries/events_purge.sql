-- Delete up to $2 operational events older than $1 seconds.
WITH doomed AS (
    SELECT id
    FROM outbox.events
    WHERE occurred_at < now() - make_interval(secs => $1)
    ORDER BY occurred_at
    LIMIT $2
)
DELETE FROM outbox.events e USING doomed WHERE e.id = doomed.id
