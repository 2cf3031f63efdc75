-- Hand claimed deliveries back without counting an attempt (shutdown before
-- or during the request): they are due again at once, for any replica.
UPDATE outbox.deliveries d
SET status = 'pending',
    attempts = d.attempts - 1,
    next_attempt_at = now(),
    lease_owner = NULL,
    updated_at = now()
FROM unnest($2::bigint[], $3::int[]) AS r(delivery_id, attempt)
WHERE d.id = r.delivery_id
  AND d.attempts = r.attempt
  AND d.lease_owner = $1
  AND d.status = 'in_flight'
RETURNING d.id
