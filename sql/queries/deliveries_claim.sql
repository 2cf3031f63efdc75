-- Claim up to $2 due deliveries for lease owner $1 for $3 seconds, walking
-- endpoints from after endpoint $4 (where this sidecar's previous claim
-- left off; '' from the start); the statement commits before any HTTP
-- call. How rows are chosen: outbox.claim in sql/schema.sql (its comment
-- and body). retry_schedule_secs is the endpoint's own retry
-- schedule (0015), NULL for the sidecar's: one key probe per claimed row.
-- db_now: the database's clock, which webhook-timestamp follows (plus the
-- local monotonic time since), so that a sidecar whose own clock is off
-- still sends timestamps receivers accept.
SELECT c.*,
       now() AS db_now,
       (SELECT array(SELECT extract(epoch FROM s.delay)::float8
                     FROM unnest(e.retry_schedule) WITH ORDINALITY AS s(delay, n)
                     ORDER BY s.n)
        FROM outbox.endpoints e
        WHERE e.id = c.endpoint_id AND e.retry_schedule IS NOT NULL) AS retry_schedule_secs
FROM outbox.claim($1, $2, $3, $4) c
