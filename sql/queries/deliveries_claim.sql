-- Claim up to $2 due deliveries for lease owner $1 for $3 seconds, in one
-- statement that commits before any HTTP call.
--
-- Fair by endpoint: every enabled endpoint with due work gets an equal
-- share of the $2 free slots, capped by its room: max_in_flight minus its
-- unexpired in-flight rows across all replicas (just 1 while it is
-- failing, so its retries cannot crowd out healthy endpoints), and its
-- rate-limit tokens. Each endpoint's rows come from its own index range,
-- so no endpoint's backlog is scanned for another.
--
-- SKIP LOCKED lets replicas claim side by side. An expired lease is due
-- again because next_attempt_at holds the lease expiry while in flight. A
-- keyed delivery is only taken when nothing earlier of its key is open.
WITH unlimited AS (
    SELECT e.id, e.block_on_dead, e.max_in_flight, e.failing_since, NULL::float8 AS tokens
    FROM outbox.endpoints e
    WHERE e.enabled AND e.rate_limit IS NULL
), limited AS (
    -- Rate-limited endpoints are locked while their tokens are spent, so
    -- replicas take turns; one busy elsewhere is skipped this time.
    SELECT e.id, e.block_on_dead, e.max_in_flight, e.failing_since,
           least(greatest(e.rate_limit, 1),
                 coalesce(e.rate_tokens, greatest(e.rate_limit, 1))
                   + e.rate_limit * extract(epoch FROM now() - coalesce(e.rate_updated_at, now())))
               AS tokens
    FROM outbox.endpoints e
    WHERE e.enabled AND e.rate_limit IS NOT NULL
    FOR NO KEY UPDATE OF e SKIP LOCKED
), candidates AS (
    SELECT c.id, c.block_on_dead, c.tokens,
           least(CASE WHEN c.failing_since IS NULL THEN c.max_in_flight ELSE 1 END
                   - (SELECT count(*) FROM outbox.deliveries f
                      WHERE f.endpoint_id = c.id AND f.status = 'in_flight' AND f.next_attempt_at > now()),
                 coalesce(floor(c.tokens)::bigint, $2)) AS room
    FROM (SELECT * FROM unlimited UNION ALL SELECT * FROM limited) c
    WHERE EXISTS (SELECT 1 FROM outbox.deliveries d
                  WHERE d.endpoint_id = c.id
                    AND d.status IN ('pending', 'in_flight')
                    AND d.next_attempt_at <= now())
), shares AS (
    SELECT id, block_on_dead, tokens,
           least(room, ceil($2::numeric / count(*) OVER ())::bigint) AS quota
    FROM candidates
    WHERE room > 0
), due AS (
    SELECT picked.id
    FROM shares s
    CROSS JOIN LATERAL (
        SELECT d.id
        FROM outbox.deliveries d
        WHERE d.endpoint_id = s.id
          AND d.status IN ('pending', 'in_flight')
          AND d.next_attempt_at <= now()
          AND (d.ordering_key IS NULL OR NOT EXISTS (
                  SELECT 1 FROM outbox.deliveries p
                  WHERE p.endpoint_id = d.endpoint_id
                    AND p.ordering_key = d.ordering_key
                    AND p.message_id < d.message_id
                    AND (p.status IN ('pending', 'in_flight') OR (p.status = 'dead' AND s.block_on_dead))))
        ORDER BY d.next_attempt_at, d.id
        LIMIT s.quota
        FOR UPDATE OF d SKIP LOCKED
    ) picked
    LIMIT $2
), claimed AS (
    UPDATE outbox.deliveries d
    SET status = 'in_flight',
        attempts = d.attempts + 1,
        lease_owner = $1,
        next_attempt_at = now() + make_interval(secs => $3::float8),
        updated_at = now()
    FROM due
    WHERE d.id = due.id
    RETURNING d.id, d.attempts, d.replay_base, d.message_id, d.endpoint_id, d.ordering_key
), spent AS (
    UPDATE outbox.endpoints e
    SET rate_tokens = s.tokens - n.taken,
        rate_updated_at = now()
    FROM (SELECT endpoint_id, count(*) AS taken FROM claimed GROUP BY endpoint_id) n
    JOIN shares s ON s.id = n.endpoint_id
    WHERE e.id = n.endpoint_id AND s.tokens IS NOT NULL
)
SELECT c.id,
       c.attempts,
       c.attempts - c.replay_base AS schedule_attempt,
       c.endpoint_id,
       c.ordering_key,
       m.event_id,
       m.event_type,
       m.payload::text AS payload,
       e.url,
       e.secrets,
       e.timeout_ms,
       e.headers::text AS headers,
       extract(epoch FROM now() - m.created_at)::float8 AS age_secs
FROM claimed c
JOIN outbox.messages m ON m.id = c.message_id
JOIN outbox.endpoints e ON e.id = c.endpoint_id
ORDER BY c.id
