-- One retention page: look at up to $4 deliveries after id $1 (keyset
-- order, so each page is an index range, never a table scan) and delete
-- those finished long enough ago: delivered or cancelled for $2 seconds,
-- dead for $3 seconds. Their attempts go with them (ON DELETE CASCADE).
-- Reports the page's last id and whether it reached rows too recent to
-- purge, so the caller knows when to stop.
WITH page AS (
    SELECT id, created_at
    FROM outbox.deliveries
    WHERE id > $1
    ORDER BY id
    LIMIT $4
), doomed AS (
    SELECT d.id
    FROM outbox.deliveries d
    JOIN page p ON p.id = d.id
    WHERE (d.status IN ('delivered', 'cancelled') AND d.updated_at < now() - make_interval(secs => $2))
       OR (d.status = 'dead' AND d.updated_at < now() - make_interval(secs => $3))
    FOR UPDATE OF d SKIP LOCKED
), deleted AS (
    DELETE FROM outbox.deliveries d USING doomed WHERE d.id = doomed.id RETURNING d.id
)
SELECT (SELECT max(id) FROM page) AS last_id,
       (SELECT count(*) FROM deleted) AS deleted,
       coalesce((SELECT bool_or(created_at >= now() - make_interval(secs => least($2, $3))) FROM page), true)
           AS reached_recent
