-- Seconds until the earliest open delivery of an enabled endpoint becomes
-- due (negative when one is overdue; 0 while a message waits to be
-- routed; a scheduled message counts when it is due), on the database's
-- clock; NULL when nothing is open. The sidecar asks this
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
SELECT least(
    -- Committed and not routed yet: due now. (A keyed one may be waiting
    -- for its producer to commit, whose NOTIFY wakes us.)
    (SELECT 0::float8
     WHERE EXISTS (SELECT 1 FROM outbox.messages m
                   WHERE NOT m.routed AND m.deliver_after IS NULL AND m.ordering_key IS NULL)),
    -- Scheduled and routed when due.
    (SELECT (extract(epoch FROM m.deliver_after) - extract(epoch FROM now()))::float8
     FROM outbox.messages m
     WHERE NOT m.routed AND m.deliver_after IS NOT NULL AND m.ordering_key IS NULL
     ORDER BY m.deliver_after
     LIMIT 1),
    -- The earliest open delivery of the first 512 endpoints that have
    -- any (one index descent each, as the claim walks them); later ones
    -- wait for the poll at worst.
    (SELECT (extract(epoch FROM min(w.due_at)) - extract(epoch FROM now()))::float8
     FROM (WITH RECURSIVE walk (endpoint_id, due_at, step) AS (
               (SELECT d.endpoint_id, d.next_attempt_at, 1
                FROM outbox.deliveries d
                WHERE d.status IN ('pending', 'in_flight')
                ORDER BY d.endpoint_id, d.next_attempt_at
                LIMIT 1)
               UNION ALL
               SELECT nx.endpoint_id, nx.next_attempt_at, w.step + 1
               FROM walk w
               CROSS JOIN LATERAL (
                   SELECT d.endpoint_id, d.next_attempt_at
                   FROM outbox.deliveries d
                   WHERE d.status IN ('pending', 'in_flight') AND d.endpoint_id > w.endpoint_id
                   ORDER BY d.endpoint_id, d.next_attempt_at
                   LIMIT 1
               ) nx
               WHERE w.step < 512
           )
           SELECT * FROM walk) w
     JOIN outbox.endpoints e ON e.id = w.endpoint_id
     WHERE e.enabled)
) AS due_in_secs
