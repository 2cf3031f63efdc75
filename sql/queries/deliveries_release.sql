-- Hand claimed deliveries back without counting an attempt (shutdown before
-- or during the request): they are due again at once, for any replica.
-- Only rows still under the same claim (owner $1, attempt, lease expiry).
UPDATE outbox.deliveries d
SET status = 'pending',
    attempts = d.attempts - 1,
    next_attempt_at = now(),
    lease_owner = NULL,
    updated_at = now()
-- `was` as a column (OFFSET 0 keeps the planner from folding it back into
-- a constant): one primary-key probe per claim, whatever the statistics
-- (see deliveries_complete.sql).
FROM (SELECT *, 'in_flight'::text AS was
      FROM unnest($2::bigint[],        -- delivery_id
                  $3::int[],           -- attempt
                  $4::timestamptz[])   -- leased_until
           AS u(delivery_id,
                attempt,
                leased_until)
      OFFSET 0) r
WHERE d.id = r.delivery_id
  AND d.attempts = r.attempt
  AND d.next_attempt_at = r.leased_until
  AND d.lease_owner = $1
  AND d.status = r.was
RETURNING d.id
