-- Cheaper claims and outcome writes (measured in docs/performance.md).
--
-- - deliveries_endpoint_status covered every row, so each delivery updated
--   it three times (fan-out, claim, outcome) and finished rows piled up in
--   it. It now holds only in-flight and dead rows: the claim's in-flight
--   count and the dead counts use it; pending rows are in deliveries_due.
-- - The attempts log referenced deliveries with a foreign key, checked row
--   by row on every outcome write, although the writer only logs attempts
--   of rows it has just updated (and locked). A trigger keeps the cascade:
--   deleting deliveries deletes their attempts.
-- - outbox.claim() found endpoints with due work through the status index,
--   reading the endpoint's in-flight rows first, and was planned on every
--   call.

-- The sidecar now also stays out of outbox.waiting while work keeps
-- arriving, so a steady stream of producers skips NOTIFY altogether.
-- A sidecar that crashed while waiting left its row behind, and producers
-- went on paying for NOTIFY. Each row now says by when its sidecar will
-- have refreshed it; waiting sidecars remove rows past that. (Rows of
-- older sidecars never go stale.)
ALTER TABLE outbox.waiting ADD COLUMN stale_after timestamptz NOT NULL DEFAULT 'infinity';

COMMENT ON TABLE outbox.waiting IS
    'Sidecars in notify mode waiting for NOTIFY: a row from when a sidecar has found no work for 10 ms until one of its claims finds some. The insert trigger notifies only while a row exists; a sidecar looks again at once, 5 ms and 50 ms after entering, for producers that checked just before. A row not refreshed by stale_after was left by a crashed sidecar and is removed by the others.';

DROP INDEX outbox.deliveries_endpoint_status;
CREATE INDEX deliveries_endpoint_status ON outbox.deliveries (endpoint_id, status)
    WHERE status IN ('in_flight', 'dead');

ALTER TABLE outbox.attempts DROP CONSTRAINT attempts_delivery_id_fkey;

-- SECURITY DEFINER: as the foreign key's cascade did, it deletes attempts
-- whoever deletes the deliveries.
CREATE FUNCTION outbox.delete_attempts() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM outbox.attempts a USING gone g WHERE a.delivery_id = g.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_delete_attempts
    AFTER DELETE ON outbox.deliveries
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.delete_attempts();

-- Each claim now also returns its lease expiry, which names the claim
-- exactly: claims no longer wait for the WAL flush, so a database crash
-- can forget one, and the same worker may then claim the row again with
-- the same attempt number. Outcome writes and releases match the lease
-- too, so the forgotten claim's outcome cannot land on the new one.
DROP FUNCTION outbox.claim(text, bigint, double precision);
CREATE FUNCTION outbox.claim(owner text, max_rows bigint, lease_secs double precision)
RETURNS TABLE (id bigint, attempts integer, schedule_attempt integer, endpoint_id text,
               ordering_key text, event_id text, event_type text, payload text, url text,
               secrets text[], timeout_ms integer, headers text, age_secs double precision,
               ca_pem text, client_cert_pem text, client_key_pem text,
               leased_until timestamptz)
LANGUAGE plpgsql
-- The plan is the same for every call; planning it each time cost more
-- than running it.
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    mine text[];
BEGIN
    -- The earliest open row of each endpoint, from deliveries_due: an
    -- index probe, whatever else the endpoint has (the lock is only tried
    -- for endpoints with due work).
    SELECT array_agg(e.id) INTO mine
    FROM outbox.endpoints e
    WHERE e.enabled
      AND CASE WHEN (SELECT d.next_attempt_at
                     FROM outbox.deliveries d
                     WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'in_flight')
                     ORDER BY d.next_attempt_at
                     LIMIT 1) <= now()
               THEN pg_try_advisory_xact_lock(hashtextextended(e.id, 8))
               ELSE false
          END;
    IF mine IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        -- Materialized: room counts the endpoint's in-flight rows once.
        SELECT e.id, e.block_on_dead,
               least(CASE WHEN e.failing_since IS NULL THEN e.max_in_flight ELSE 1 END
                       - (SELECT count(*) FROM outbox.deliveries f
                          WHERE f.endpoint_id = e.id AND f.status = 'in_flight' AND f.next_attempt_at > now()),
                     coalesce(floor(t.tokens)::bigint, max_rows)) AS room,
               t.tokens
        FROM outbox.endpoints e
        CROSS JOIN LATERAL (
            SELECT CASE WHEN e.rate_limit IS NOT NULL
                        THEN least(greatest(e.rate_limit, 1),
                                   coalesce(e.rate_tokens, greatest(e.rate_limit, 1))
                                     + e.rate_limit * extract(epoch FROM now() - coalesce(e.rate_updated_at, now())))
                   END AS tokens
        ) t
        WHERE e.id = ANY (mine)
    ), shares AS (
        SELECT id, block_on_dead, tokens,
               least(room, ceil(max_rows::numeric / count(*) OVER ())::bigint) AS quota
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
                      -- Spelled to match deliveries_ordering exactly.
                      SELECT 1 FROM outbox.deliveries p
                      WHERE p.endpoint_id = d.endpoint_id
                        AND p.ordering_key = d.ordering_key
                        AND p.message_id < d.message_id
                        AND p.status IN ('pending', 'in_flight', 'dead')
                        AND (p.status <> 'dead' OR s.block_on_dead)))
            ORDER BY d.next_attempt_at, d.id
            LIMIT s.quota
            FOR UPDATE OF d SKIP LOCKED
        ) picked
        LIMIT max_rows
    ), claimed AS (
        UPDATE outbox.deliveries d
        SET status = 'in_flight',
            attempts = d.attempts + 1,
            lease_owner = owner,
            next_attempt_at = now() + make_interval(secs => lease_secs),
            updated_at = now()
        -- By primary key: a join with the CTE lets the planner hash-join
        -- against a scan of the whole table.
        WHERE d.id = ANY (ARRAY(SELECT due.id FROM due))
        RETURNING d.id, d.attempts, d.replay_base, d.message_id, d.endpoint_id, d.ordering_key,
                  d.next_attempt_at
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
           extract(epoch FROM now() - m.created_at)::float8 AS age_secs,
           e.ca_pem,
           e.client_cert_pem,
           e.client_key_pem,
           c.next_attempt_at
    FROM claimed c
    JOIN outbox.messages m ON m.id = c.message_id
    JOIN outbox.endpoints e ON e.id = c.endpoint_id
    ORDER BY c.id;
END
$fn$;
