-- Ordering keys and per-endpoint fairness.
--
-- Ordering: deliveries that share (endpoint, ordering_key) go out one at a
-- time in messages.id order. Only the head of each key is due; the others
-- wait with next_attempt_at = 'infinity', outside the claim's index range,
-- so a long queue behind a key costs the claim nothing. When the head
-- finishes, a trigger makes the next one due.
--
-- Fairness: claims go endpoint by endpoint (an index per endpoint), so one
-- endpoint's backlog is never scanned to reach another's.

ALTER TABLE outbox.endpoints
    -- Whether a dead delivery holds back the rest of its ordering key
    -- (true) or lets the next one through (false, recorded in the
    -- delivery.dead event).
    ADD COLUMN block_on_dead boolean NOT NULL DEFAULT false,
    -- Token bucket of the optional rate limit, kept by the claim.
    ADD COLUMN rate_tokens double precision,
    ADD COLUMN rate_updated_at timestamptz;

-- The ordering key, copied from the message so claims and promotions need
-- no join.
ALTER TABLE outbox.deliveries ADD COLUMN ordering_key text;

DROP INDEX outbox.deliveries_due;
CREATE INDEX deliveries_due ON outbox.deliveries (endpoint_id, next_attempt_at, id)
    WHERE status IN ('pending', 'in_flight');
-- Open (and dead, for block_on_dead) deliveries of each key, by message.
CREATE INDEX deliveries_ordering ON outbox.deliveries (endpoint_id, ordering_key, message_id)
    WHERE ordering_key IS NOT NULL AND status IN ('pending', 'in_flight', 'dead');

-- The lock that orders everything touching one (endpoint, ordering key):
-- producers hold it from their insert to their commit, the outcome writer
-- while it finishes a head and promotes the next. Both take their keys in
-- sorted order, so they cannot deadlock on each other.
CREATE FUNCTION outbox.ordering_lock_id(endpoint_id text, ordering_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(endpoint_id || chr(31) || ordering_key, 7)
$$;

-- Fan-out, now ordering-aware: a keyed delivery is due only if nothing
-- earlier of its key is open; otherwise it waits ('infinity').
-- SECURITY DEFINER: producers need only INSERT on outbox.messages, not
-- rights on deliveries and endpoints (every name below is qualified).
CREATE OR REPLACE FUNCTION outbox.fan_out() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unknown text;
BEGIN
    SELECT n.endpoint_id INTO unknown
    FROM new_messages n
    WHERE n.endpoint_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM outbox.endpoints e WHERE e.id = n.endpoint_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'outbox.messages: unknown endpoint_id "%"', unknown
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Insert the endpoint into outbox.endpoints first, or leave endpoint_id NULL to fan out by event_type.';
    END IF;

    IF EXISTS (SELECT 1 FROM new_messages WHERE ordering_key IS NOT NULL) THEN
        -- Before looking at earlier deliveries: their writers finish first.
        PERFORM pg_advisory_xact_lock(outbox.ordering_lock_id(k.endpoint_id, k.ordering_key))
        FROM (SELECT DISTINCT e.id AS endpoint_id, n.ordering_key
              FROM new_messages n
              JOIN outbox.endpoints e
                ON e.id = n.endpoint_id
                OR (n.endpoint_id IS NULL AND e.enabled
                    AND (e.event_types IS NULL OR n.event_type = ANY (e.event_types)))
              WHERE n.ordering_key IS NOT NULL
              ORDER BY 1, 2) k;
    END IF;

    INSERT INTO outbox.deliveries (message_id, endpoint_id, ordering_key, next_attempt_at)
    SELECT n.id, e.id, n.ordering_key,
           CASE WHEN n.ordering_key IS NULL THEN coalesce(n.deliver_after, now())
                WHEN row_number() OVER (PARTITION BY e.id, n.ordering_key ORDER BY n.id) = 1
                     AND NOT EXISTS (
                         SELECT 1 FROM outbox.deliveries p
                         WHERE p.endpoint_id = e.id
                           AND p.ordering_key = n.ordering_key
                           AND p.status IN ('pending', 'in_flight', 'dead')
                           AND (p.status <> 'dead' OR e.block_on_dead))
                THEN coalesce(n.deliver_after, now())
                ELSE 'infinity'
           END
    FROM new_messages n
    JOIN outbox.endpoints e
      ON e.id = n.endpoint_id
      OR (n.endpoint_id IS NULL
          AND e.enabled
          AND (e.event_types IS NULL OR n.event_type = ANY (e.event_types)));
    RETURN NULL;
END
$$;

-- When the head of a key finishes, the next delivery of the key becomes due
-- (not before its deliver_after). A dead head lets it through unless the
-- endpoint blocks on dead.
CREATE FUNCTION outbox.promote_next_in_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'dead'
       AND (SELECT e.block_on_dead FROM outbox.endpoints e WHERE e.id = NEW.endpoint_id) THEN
        RETURN NULL;
    END IF;
    -- Re-entrant: the outcome writer already holds it. Taken here too so
    -- that cancel(), replay and manual updates are just as safe. Taking it
    -- waits for a producer of this key to commit; the UPDATE below then
    -- runs with a fresh snapshot and sees that producer's delivery.
    PERFORM pg_advisory_xact_lock(outbox.ordering_lock_id(NEW.endpoint_id, NEW.ordering_key));
    UPDATE outbox.deliveries d
    SET next_attempt_at = greatest(now(), coalesce(m.deliver_after, now())),
        updated_at = now()
    FROM outbox.messages m
    WHERE d.id = (SELECT n.id
                  FROM outbox.deliveries n
                  WHERE n.endpoint_id = NEW.endpoint_id
                    AND n.ordering_key = NEW.ordering_key
                    AND n.status IN ('pending', 'in_flight', 'dead')
                    AND n.message_id > NEW.message_id
                  ORDER BY n.message_id
                  LIMIT 1)
      AND d.status = 'pending'
      AND d.next_attempt_at = 'infinity'
      AND m.id = d.message_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_promote_next_in_key
    AFTER UPDATE OF status ON outbox.deliveries
    FOR EACH ROW WHEN (
        NEW.ordering_key IS NOT NULL
        AND OLD.status IN ('pending', 'in_flight', 'dead')
        AND NEW.status IN ('delivered', 'dead', 'cancelled')
        AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION outbox.promote_next_in_key();

-- The dead event says whether the key moved on.
CREATE OR REPLACE FUNCTION outbox.on_delivery_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'dead' THEN
        PERFORM outbox.record_event('delivery.dead', NEW.endpoint_id, NEW.id,
            jsonb_build_object('attempts', NEW.attempts, 'last_status_code', NEW.last_status_code,
                               'last_error', NEW.last_error)
            || CASE WHEN NEW.ordering_key IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object(
                        'ordering_key', NEW.ordering_key,
                        'next_in_key_released',
                        NOT (SELECT e.block_on_dead FROM outbox.endpoints e WHERE e.id = NEW.endpoint_id))
               END);
    ELSE
        PERFORM outbox.record_event('delivery.replay_succeeded', NEW.endpoint_id, NEW.id,
            jsonb_build_object('attempts', NEW.attempts, 'replayed_at', NEW.replayed_at));
    END IF;
    RETURN NULL;
END
$$;

-- A delivery waiting behind its key shows no next_attempt_at.
CREATE OR REPLACE VIEW outbox.message_status AS
SELECT d.id                AS delivery_id,
       m.id                AS message_id,
       m.event_id,
       m.event_type,
       d.endpoint_id,
       d.status,
       d.attempts,
       d.last_status_code,
       d.last_error,
       CASE WHEN d.status = 'pending' AND d.next_attempt_at <> 'infinity'
            THEN d.next_attempt_at END AS next_attempt_at,
       d.delivered_at,
       m.ordering_key,
       m.created_at,
       d.updated_at
FROM outbox.deliveries d
JOIN outbox.messages m ON m.id = d.message_id;

-- Enabling an endpoint starts its health afresh, however it is enabled
-- (CLI, SQL), so the failure-period rule does not disable it again at once.
CREATE FUNCTION outbox.on_endpoint_enabling() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.failure_streak := 0;
    NEW.failing_since := NULL;
    NEW.disabled_reason := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER endpoints_enabling
    BEFORE UPDATE OF enabled ON outbox.endpoints
    FOR EACH ROW WHEN (NEW.enabled AND NOT OLD.enabled)
    EXECUTE FUNCTION outbox.on_endpoint_enabling();

-- The claim. A function rather than one statement because a per-endpoint
-- cap (max_in_flight across replicas, rate-limit tokens) needs claims for
-- one endpoint to take turns: first take each endpoint's claim lock
-- (skipping endpoints another replica is claiming for right now), then
-- look with a fresh snapshot that includes every claim committed before.
--
-- Fair by endpoint: every enabled endpoint with due work gets an equal
-- share of the free slots, capped by its room: max_in_flight minus its
-- unexpired in-flight rows (just 1 while it is failing, so its retries
-- cannot crowd out healthy endpoints), and its rate-limit tokens. Each
-- endpoint's rows come from its own index range, so no endpoint's backlog
-- is scanned for another. An expired lease is due again because
-- next_attempt_at holds the lease expiry while in flight. A keyed
-- delivery is only taken when nothing earlier of its key is open.
CREATE FUNCTION outbox.claim(owner text, max_rows bigint, lease_secs double precision)
RETURNS TABLE (id bigint, attempts integer, schedule_attempt integer, endpoint_id text,
               ordering_key text, event_id text, event_type text, payload text, url text,
               secrets text[], timeout_ms integer, headers text, age_secs double precision,
               ca_pem text, client_cert_pem text, client_key_pem text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    mine text[];
BEGIN
    SELECT array_agg(e.id) INTO mine
    FROM outbox.endpoints e
    WHERE e.enabled
      AND EXISTS (SELECT 1 FROM outbox.deliveries d
                  WHERE d.endpoint_id = e.id
                    AND d.status IN ('pending', 'in_flight')
                    AND d.next_attempt_at <= now())
      AND pg_try_advisory_xact_lock(hashtextextended(e.id, 8));
    IF mine IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH candidates AS (
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
           extract(epoch FROM now() - m.created_at)::float8 AS age_secs,
           e.ca_pem,
           e.client_cert_pem,
           e.client_key_pem
    FROM claimed c
    JOIN outbox.messages m ON m.id = c.message_id
    JOIN outbox.endpoints e ON e.id = c.endpoint_id
    ORDER BY c.id;
END
$fn$;
