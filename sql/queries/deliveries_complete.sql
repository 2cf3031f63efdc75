-- Write a batch of attempt outcomes for lease owner $1. Each outcome only
-- lands if the row is still in flight under the same (owner, attempt): a
-- worker whose lease expired and was re-claimed changes nothing, not even
-- the attempts log. Returns the delivery ids that were written.
WITH outcome AS (
    SELECT *
    FROM unnest($2::bigint[], $3::int[], $4::text[], $5::float8[], $6::int[], $7::text[],
                $8::timestamptz[], $9::int[], $10::text[], $11::text[])
         AS o(delivery_id, attempt, status, retry_in_secs, status_code, error,
              started_at, duration_ms, response_excerpt, disable_reason)
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
    WHERE d.id = o.delivery_id
      AND d.attempts = o.attempt
      AND d.lease_owner = $1
      AND d.status = 'in_flight'
    RETURNING d.id, d.attempts, d.endpoint_id
), disabled AS (
    UPDATE outbox.endpoints e
    SET enabled = false,
        disabled_reason = o.disable_reason,
        updated_at = now()
    FROM written w
    JOIN outcome o ON o.delivery_id = w.id AND o.attempt = w.attempts
    WHERE o.disable_reason IS NOT NULL
      AND e.id = w.endpoint_id
      AND e.enabled
)
INSERT INTO outbox.attempts
    (delivery_id, attempt, started_at, duration_ms, status_code, error, response_excerpt,
     worker_id)
SELECT o.delivery_id, o.attempt, o.started_at, o.duration_ms, o.status_code, o.error,
       o.response_excerpt, $1
FROM outcome o
JOIN written w ON w.id = o.delivery_id AND w.attempts = o.attempt
RETURNING delivery_id
