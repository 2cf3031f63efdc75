-- Endpoint $1's own retry schedule: delays in seconds $2, in order (NULL:
-- the sidecar's again), recording $3 as who asked.
SELECT outbox.set_retry_schedule(
    $1,
    CASE WHEN $2::float8[] IS NOT NULL THEN
        ARRAY(SELECT make_interval(secs => u.secs)
              FROM unnest($2::float8[]) WITH ORDINALITY AS u(secs, n)
              ORDER BY u.n)
    END,
    $3)
