-- Claim up to $2 due deliveries for lease owner $1 for $3 seconds, in one
-- statement that commits before any HTTP call. SKIP LOCKED lets replicas
-- claim side by side; the CTE keeps LIMIT exact. An expired lease is due
-- again because next_attempt_at holds the lease expiry while in flight.
WITH due AS (
    SELECT d.id
    FROM outbox.deliveries d
    WHERE d.status IN ('pending', 'in_flight')
      AND d.next_attempt_at <= now()
      AND EXISTS (SELECT 1 FROM outbox.endpoints e WHERE e.id = d.endpoint_id AND e.enabled)
    ORDER BY d.next_attempt_at, d.id
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE outbox.deliveries d
    SET status = 'in_flight',
        attempts = d.attempts + 1,
        lease_owner = $1,
        next_attempt_at = now() + make_interval(secs => $3::float8),
        updated_at = now()
    FROM due
    WHERE d.id = due.id
    RETURNING d.id, d.attempts, d.message_id, d.endpoint_id
)
SELECT c.id,
       c.attempts,
       c.endpoint_id,
       m.event_id,
       m.event_type,
       m.payload::text AS payload,
       e.url,
       e.secrets,
       e.timeout_ms,
       e.headers::text AS headers,
       e.ca_pem,
       e.client_cert_pem,
       e.client_key_pem
FROM claimed c
JOIN outbox.messages m ON m.id = c.message_id
JOIN outbox.endpoints e ON e.id = c.endpoint_id
ORDER BY c.id
