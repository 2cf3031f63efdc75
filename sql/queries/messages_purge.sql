-- One retention page of messages: delete, among up to $3 messages after id
-- $1, those older than $2 seconds that have no delivery left (all purged,
-- or none were ever fanned out). Same keyset paging as deliveries_purge.
WITH page AS (
    SELECT id, created_at
    FROM outbox.messages
    WHERE id > $1
    ORDER BY id
    LIMIT $3
), doomed AS (
    SELECT m.id
    FROM outbox.messages m
    JOIN page p ON p.id = m.id
    WHERE m.created_at < now() - make_interval(secs => $2)
      AND NOT EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.message_id = m.id)
    FOR UPDATE OF m SKIP LOCKED
), deleted AS (
    DELETE FROM outbox.messages m USING doomed WHERE m.id = doomed.id RETURNING m.id
)
SELECT (SELECT max(id) FROM page) AS last_id,
       (SELECT count(*) FROM deleted) AS deleted,
       coalesce((SELECT bool_or(created_at >= now() - make_interval(secs => $2)) FROM page), true)
           AS reached_recent
