-- Write a batch of attempt outcomes for lease owner $1. Each outcome only
-- lands if the row is still in flight under the same claim (owner,
-- attempt, lease expiry $13): a worker whose lease expired and was
-- re-claimed changes nothing, not even the attempts log, and neither does
-- the outcome of a claim that a database crash forgot (the row may have
-- been claimed again with the same attempt number). The same statement keeps each endpoint's health
-- (last success, failure streak) and disables endpoints that answered 410
-- Gone or have failed every attempt for longer than $12 seconds. Returns
-- the delivery ids that were written.
WITH outcome AS (
    -- `was`: the status a fenced row must have, as a column rather than a
    -- constant, so that no plan can start from the index of in-flight rows
    -- and compare each with the whole batch (a plan the statistics invite
    -- when few rows were in flight at the last ANALYZE: seconds per write
    -- with a thousand in flight). Each outcome is one primary-key probe.
    SELECT *, 'in_flight'::text AS was
    FROM unnest($2::bigint[],       -- delivery_id      } the claim (fence),
                $3::int[],          -- attempt          } with owner $1
                $13::timestamptz[], -- leased_until     }
                $4::text[],         -- status: delivered, pending (retry), dead
                $5::float8[],       -- retry_in_secs (pending)
                $6::int[],          -- status_code
                $7::text[],         -- error
                $8::timestamptz[],  -- started_at
                $9::int[],          -- duration_ms
                $10::text[],        -- response_excerpt
                $11::text[])        -- disable_reason (410 Gone)
         WITH ORDINALITY
         AS o(delivery_id,
              attempt,
              leased_until,
              status,
              retry_in_secs,
              status_code,
              error,
              started_at,
              duration_ms,
              response_excerpt,
              disable_reason,
              n)
), written AS (
    UPDATE outbox.deliveries d
    SET status = o.status,
        next_attempt_at = CASE WHEN o.status = 'pending'
                               THEN now() + make_interval(secs => o.retry_in_secs) END,
        lease_owner = NULL,
        last_status_code = o.status_code,
        last_error = o.error,
        delivered_at = CASE WHEN o.status = 'delivered' THEN now() END,
        updated_at = now()
    FROM outcome o
    -- One primary-key probe per outcome. (Adding `d.id = ANY ($2)` made
    -- the planner scan the batch once per row instead: quadratic.)
    WHERE d.id = o.delivery_id
      AND d.attempts = o.attempt
      AND d.next_attempt_at = o.leased_until
      AND d.lease_owner = $1
      AND d.status = o.was
    -- o.n: the outcome that landed, once even if the batch repeats one.
    RETURNING d.id, d.endpoint_id, d.tenant_id, o.n
), per_endpoint AS (
    SELECT w.endpoint_id,
           bool_or(o.status = 'delivered') AS succeeded,
           (count(*) FILTER (WHERE o.status <> 'delivered'))::int AS failed,
           max(o.disable_reason) AS disable_reason
    FROM written w
    JOIN outcome o ON o.n = w.n
    GROUP BY w.endpoint_id
), locked AS (
    -- Lock endpoint rows in id order so concurrent writers cannot deadlock.
    SELECT e.id
    FROM outbox.endpoints e
    JOIN per_endpoint p ON p.endpoint_id = e.id
    ORDER BY e.id
    FOR NO KEY UPDATE OF e
), health AS (
    UPDATE outbox.endpoints e
    SET last_success_at = CASE WHEN p.succeeded THEN now() ELSE e.last_success_at END,
        failure_streak = CASE WHEN p.succeeded THEN 0 ELSE e.failure_streak + p.failed END,
        failing_since = CASE WHEN p.succeeded THEN NULL ELSE coalesce(e.failing_since, now()) END,
        enabled = e.enabled AND p.disable_reason IS NULL
                  AND NOT (NOT p.succeeded
                           AND coalesce(e.failing_since < now() - make_interval(secs => $12::float8), false)),
        disabled_reason = CASE WHEN NOT e.enabled THEN e.disabled_reason
                               WHEN p.disable_reason IS NOT NULL THEN p.disable_reason
                               WHEN NOT p.succeeded
                                    AND coalesce(e.failing_since < now() - make_interval(secs => $12::float8), false)
                               THEN format('every attempt has failed since %s', e.failing_since)
                               ELSE e.disabled_reason END,
        updated_at = now()
    FROM per_endpoint p
    JOIN locked l ON l.id = p.endpoint_id
    WHERE e.id = p.endpoint_id
      -- A healthy endpoint's row is touched at most once a second.
      AND (NOT p.succeeded
           OR p.disable_reason IS NOT NULL
           OR e.failure_streak <> 0
           OR e.last_success_at IS NULL
           OR e.last_success_at < now() - interval '1 second')
)
INSERT INTO outbox.attempts
    (delivery_id, attempt, started_at, duration_ms, status_code, error, response_excerpt,
     worker_id, tenant_id)
SELECT o.delivery_id, o.attempt, o.started_at, o.duration_ms, o.status_code, o.error,
       o.response_excerpt, $1, w.tenant_id
FROM outcome o
JOIN written w ON w.n = o.n
RETURNING delivery_id
