-- Claims whose cost does not grow with the fleet (issue 16).
--
-- The claim of 0011 probed every enabled endpoint on every call: with
-- 2,000 endpoints it peaked at 4,660 rows/s. Now it walks the endpoints
-- that have open deliveries, in id order from where this sidecar's last
-- claim left off (wrapping around), one index descent per endpoint
-- (deliveries_due is ordered by endpoint, then due time, so the first
-- entry after an endpoint is the next endpoint's earliest due time). It
-- stops after max_rows endpoints with due work and room, or after a walk
-- of four times that many: its cost follows the batch, not the fleet.
--
-- Fair by tenant, then by endpoint: each tenant among the endpoints found
-- gets an equal share of the batch, split among its endpoints (each at
-- least one row, within its room), and the rows are taken tenant by
-- tenant, so one tenant's many endpoints cannot crowd out another's.
--
-- Endpoint claim locks move to outboxd's advisory-lock space (two-int
-- form): 0x6F627803.

DROP FUNCTION outbox.claim(text, bigint, double precision);
CREATE FUNCTION outbox.claim(owner text, max_rows bigint, lease_secs double precision,
                             after_endpoint text)
RETURNS TABLE (id bigint, attempts integer, schedule_attempt integer, endpoint_id text,
               ordering_key text, event_id text, event_type text, payload text, url text,
               secrets text[], timeout_ms integer, headers text, age_secs double precision,
               ca_pem text, client_cert_pem text, client_key_pem text,
               leased_until timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
-- The generic plan is made once per session, perhaps while the tables are
-- nearly empty (after a TRUNCATE, or on a new database), when a sequential
-- scan looks cheapest; it would then scan every delivery on every claim
-- (12 ms per claim of 128 rows at 40,000 rows, measured). Every statement
-- here is meant to run on its indexes. (And no JIT: the penalty that
-- turns sequential scans off would make every plan look expensive enough
-- to compile, 100 ms and more each time.)
SET enable_seqscan = off
SET jit = off
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    mine text[];
BEGIN
    -- Endpoints with open deliveries, from after_endpoint on and then from
    -- the start, with their earliest due time; lazily, so the walk stops
    -- as soon as enough endpoints are found.
    WITH RECURSIVE walk (endpoint_id, due_at, step, wrapped) AS (
        (SELECT s.endpoint_id, s.next_attempt_at, 1, s.wrapped
         FROM ((SELECT d.endpoint_id, d.next_attempt_at, false AS wrapped
                FROM outbox.deliveries d
                WHERE d.status IN ('pending', 'in_flight') AND d.endpoint_id > after_endpoint
                ORDER BY d.endpoint_id, d.next_attempt_at
                LIMIT 1)
               UNION ALL
               (SELECT d.endpoint_id, d.next_attempt_at, true
                FROM outbox.deliveries d
                WHERE d.status IN ('pending', 'in_flight') AND d.endpoint_id <= after_endpoint
                ORDER BY d.endpoint_id, d.next_attempt_at
                LIMIT 1)) s
         LIMIT 1)
        UNION ALL
        SELECT nx.endpoint_id, nx.next_attempt_at, w.step + 1, nx.wrapped
        FROM walk w
        CROSS JOIN LATERAL (
            SELECT s.endpoint_id, s.next_attempt_at, s.wrapped
            FROM ((SELECT d.endpoint_id, d.next_attempt_at, w.wrapped AS wrapped
                   FROM outbox.deliveries d
                   WHERE d.status IN ('pending', 'in_flight') AND d.endpoint_id > w.endpoint_id
                     AND (NOT w.wrapped OR d.endpoint_id <= after_endpoint)
                   ORDER BY d.endpoint_id, d.next_attempt_at
                   LIMIT 1)
                  UNION ALL
                  (SELECT d.endpoint_id, d.next_attempt_at, true
                   FROM outbox.deliveries d
                   WHERE NOT w.wrapped
                     AND d.status IN ('pending', 'in_flight') AND d.endpoint_id <= after_endpoint
                   ORDER BY d.endpoint_id, d.next_attempt_at
                   LIMIT 1)) s
            LIMIT 1
        ) nx
        WHERE w.step < greatest(max_rows, 16) * 4
    )
    SELECT array_agg(c.id) INTO mine
    FROM (SELECT e.id
          FROM walk w
          JOIN outbox.endpoints e ON e.id = w.endpoint_id
          WHERE w.due_at <= now()
            AND e.enabled
            AND pg_try_advisory_xact_lock(1868724227, hashtext(e.id))
          LIMIT max_rows) c;
    IF mine IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        -- Materialized: room counts the endpoint's in-flight rows once.
        SELECT e.id, e.tenant_id, e.block_on_dead,
               least(CASE WHEN e.failing_since IS NULL THEN e.max_in_flight ELSE 1 END
                       - (SELECT count(*) FROM outbox.deliveries f
                          WHERE f.endpoint_id = e.id AND f.status = 'in_flight' AND f.next_attempt_at > now()),
                     coalesce(floor(t.tokens)::bigint, max_rows)) AS room,
               t.tokens
        -- By key: a filter `e.id = ANY (mine)` compares every endpoint with
        -- every id (a million comparisons with a thousand endpoints).
        FROM unnest(mine) AS picked_endpoint(id)
        JOIN outbox.endpoints e ON e.id = picked_endpoint.id
        CROSS JOIN LATERAL (
            SELECT CASE WHEN e.rate_limit IS NOT NULL
                        THEN least(greatest(e.rate_limit, 1),
                                   coalesce(e.rate_tokens, greatest(e.rate_limit, 1))
                                     + e.rate_limit * extract(epoch FROM now() - coalesce(e.rate_updated_at, now())))
                   END AS tokens
        ) t
    ), open AS (
        SELECT c.*,
               count(*) OVER (PARTITION BY c.tenant_id) AS tenant_endpoints,
               row_number() OVER (PARTITION BY c.tenant_id ORDER BY c.id) AS turn
        FROM candidates c
        WHERE c.room > 0
    ), shares AS (
        SELECT o.id, o.block_on_dead, o.tokens, o.turn,
               least(o.room,
                     ceil(ceil(max_rows::numeric / (SELECT count(DISTINCT coalesce(x.tenant_id, '')) FROM open x))
                          / o.tenant_endpoints)::bigint) AS quota
        FROM open o
    ), due AS (
        SELECT picked.id
        FROM (SELECT * FROM shares ORDER BY turn, id) s
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
