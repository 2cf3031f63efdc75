-- Routing and endpoint changes, serialised (noticed in session 3).
--
-- outbox.route read an endpoint and inserted its delivery without locking
-- it, and deliveries have no foreign key (its per-row check would cost the
-- hot path). So an endpoint deleted, renamed or moved to another tenant
-- while a router was routing to it passed its own check (the router's
-- deliveries were not yet committed), and the router then committed:
-- a delivery for an endpoint that no longer exists (pending forever), or a
-- message of one tenant queued for an endpoint now of another. outbox.recover
-- had the second race.
--
-- Now whatever makes deliveries for endpoints it has read (route, recover)
-- holds a shared advisory lock, space 0x6F627805, until it commits, and
-- whatever changes who an endpoint is (DELETE, a new id, a new tenant_id)
-- takes it exclusively before its check: the change waits for routing in
-- progress and then sees its deliveries, and routing does nothing while
-- the change is in a transaction (it tries the lock and routes nothing
-- when it cannot have it), then sees the endpoint as it became. Routers
-- never wait for each other, and claims of deliveries already routed go
-- on; new messages wait while such a change is open, so commit it
-- promptly. Disabling an endpoint is not such a change: a message
-- written while it was enabled still goes to it.
--
-- Deleting or renaming an endpoint that committed messages name, still
-- unrouted (the sidecar was down), is refused too: they would have been
-- marked routed with no delivery at all.

CREATE OR REPLACE FUNCTION outbox.route(max_messages integer) RETURNS integer
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    picked bigint[];
    keyed bigint[];
BEGIN
    -- Deliveries are made only for endpoints that stay as they were read
    -- until this transaction commits (migration 0019 says why). While a
    -- change holds the lock, or waits for it, route nothing this time
    -- rather than wait: the claim sent right behind this statement must
    -- not stall behind somebody's open transaction.
    IF NOT pg_try_advisory_xact_lock_shared(1868724229, 0) THEN  -- 0x6F627805
        RETURN 0;
    END IF;

    -- Unkeyed messages: any order will do; rows another router holds are
    -- skipped.
    WITH oldest AS (
        SELECT m.id
        FROM outbox.messages m
        WHERE NOT m.routed AND m.deliver_after IS NULL AND m.ordering_key IS NULL
        ORDER BY m.id
        LIMIT max_messages / 2
        FOR UPDATE SKIP LOCKED
    ), newest AS (
        SELECT m.id
        FROM outbox.messages m
        WHERE NOT m.routed AND m.deliver_after IS NULL AND m.ordering_key IS NULL
        ORDER BY m.id DESC
        LIMIT max_messages / 2
        FOR UPDATE SKIP LOCKED
    ), scheduled AS (
        SELECT m.id
        FROM outbox.messages m
        WHERE NOT m.routed AND m.deliver_after IS NOT NULL AND m.ordering_key IS NULL
          AND m.deliver_after <= now()
        ORDER BY m.deliver_after, m.id
        LIMIT max_messages
        FOR UPDATE SKIP LOCKED
    )
    SELECT array_agg(u.id ORDER BY u.id) INTO picked
    FROM (SELECT id FROM oldest UNION SELECT id FROM newest UNION SELECT id FROM scheduled) u;

    -- Keyed messages: keys first, rows second. A router locks a keyed
    -- message only while it holds the key, so no other router can skip an
    -- earlier message of the key (row-locked, not yet routed) and route a
    -- later one. Each key is tried once: tried row by row, a key could fail
    -- for an early row and succeed for a later one, once its producer
    -- committed.
    IF EXISTS (SELECT 1 FROM outbox.messages m WHERE NOT m.routed AND m.ordering_key IS NOT NULL) THEN
        WITH oldest AS MATERIALIZED (
            SELECT m.id, m.tenant_id, m.ordering_key
            FROM outbox.messages m
            WHERE NOT m.routed AND m.ordering_key IS NOT NULL
            ORDER BY m.id
            LIMIT max_messages
        ), keys AS MATERIALIZED (
            SELECT k.tenant_id, k.ordering_key
            FROM (SELECT DISTINCT o.tenant_id, o.ordering_key FROM oldest o) k
            WHERE outbox.try_lock_message_key(k.tenant_id, k.ordering_key)
        ), held AS (
            SELECT m.id
            FROM outbox.messages m
            WHERE m.id IN (SELECT o.id FROM oldest o JOIN keys k
                           ON k.ordering_key = o.ordering_key AND k.tenant_id IS NOT DISTINCT FROM o.tenant_id)
              AND NOT m.routed
            FOR UPDATE SKIP LOCKED
        )
        SELECT array_agg(h.id) INTO keyed FROM held h;
        picked := coalesce(picked, '{}') || coalesce(keyed, '{}');
    END IF;
    IF coalesce(cardinality(picked), 0) = 0 THEN
        RETURN 0;
    END IF;

    IF keyed IS NULL THEN
        INSERT INTO outbox.deliveries
            (message_id, endpoint_id, tenant_id, status, next_attempt_at, last_error)
        SELECT t.message_id, t.endpoint_id, t.tenant_id,
               CASE WHEN t.refusal IS NULL THEN 'pending' ELSE 'dead' END,
               CASE WHEN t.refusal IS NULL THEN t.due_at END,
               t.refusal
        FROM outbox.route_targets(picked) t
        ORDER BY t.message_id, t.endpoint_id;
    ELSE
        -- A keyed delivery is due only when nothing earlier of its
        -- (endpoint, key) is open. Lock those first (the outcome writer
        -- holds them while it finishes a head and makes the next one due),
        -- then look. "Earlier" is by message id, as the claim and the
        -- promotion count it: should a message be routed after a later one
        -- of its key (producers that commit out of id order), it goes
        -- first, and nothing waits forever.
        PERFORM outbox.lock_ordering_key(k.endpoint_id, k.ordering_key)
        FROM (SELECT DISTINCT t.endpoint_id, t.ordering_key,
                     outbox.ordering_lock_key(t.endpoint_id, t.ordering_key) AS lock_key
              FROM outbox.route_targets(picked) t
              WHERE t.ordering_key IS NOT NULL
              ORDER BY 3, 1, 2) k;
        INSERT INTO outbox.deliveries
            (message_id, endpoint_id, tenant_id, ordering_key, status, next_attempt_at, last_error)
        SELECT t.message_id, t.endpoint_id, t.tenant_id, t.ordering_key,
               CASE WHEN t.refusal IS NULL THEN 'pending' ELSE 'dead' END,
               CASE WHEN t.refusal IS NOT NULL THEN NULL
                    WHEN t.ordering_key IS NULL THEN t.due_at
                    WHEN row_number() OVER (PARTITION BY t.endpoint_id, t.ordering_key ORDER BY t.message_id) = 1
                         AND NOT EXISTS (
                             SELECT 1 FROM outbox.deliveries p
                             WHERE p.endpoint_id = t.endpoint_id
                               AND p.ordering_key = t.ordering_key
                               AND p.message_id < t.message_id
                               AND p.status IN ('pending', 'in_flight', 'dead')
                               AND (p.status <> 'dead' OR t.block_on_dead))
                    THEN t.due_at
                    ELSE 'infinity'
               END,
               t.refusal
        FROM outbox.route_targets(picked) t
        ORDER BY t.message_id, t.endpoint_id;
    END IF;

    UPDATE outbox.messages m SET routed = true WHERE m.id = ANY (picked);
    RETURN cardinality(picked);
END
$$;


CREATE OR REPLACE FUNCTION outbox.recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone DEFAULT NULL::timestamp with time zone, event_types text[] DEFAULT NULL::text[], triggered_by text DEFAULT NULL::text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    target record;
    types text[];
    picked bigint[];
    made integer;
BEGIN
    -- The lock keeps the endpoint as read here until this commits (0015
    -- locked its row FOR KEY SHARE, which a tenant move passed; taking both
    -- would deadlock with a DELETE, which locks the row before the lock).
    PERFORM pg_advisory_xact_lock_shared(1868724229, 0);  -- 0x6F627805
    SELECT e.id, e.tenant_id, e.event_types, e.block_on_dead INTO target
    FROM outbox.endpoints e WHERE e.id = recover.endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox.recover: unknown endpoint "%"', outbox.shown(endpoint_id)
            USING ERRCODE = 'no_data_found';
    END IF;
    IF since IS NULL THEN
        RAISE EXCEPTION 'outbox.recover: since is required'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    types := coalesce(recover.event_types, target.event_types);

    WITH missed AS (
        SELECT m.id
        FROM outbox.messages m
        WHERE m.created_at >= since
          AND (until IS NULL OR m.created_at < until)
          AND m.routed
          AND m.tenant_id IS NOT DISTINCT FROM target.tenant_id
          AND (m.endpoint_id IS NULL OR m.endpoint_id = target.id)
          AND (types IS NULL OR m.event_type = ANY (types))
          AND NOT EXISTS (SELECT 1 FROM outbox.deliveries d
                          WHERE d.message_id = m.id AND d.endpoint_id = target.id)
        FOR KEY SHARE OF m
    )
    SELECT array_agg(missed.id ORDER BY missed.id) INTO picked FROM missed;

    PERFORM outbox.lock_ordering_key(target.id, k.ordering_key)
    FROM (SELECT DISTINCT m.ordering_key, outbox.ordering_lock_key(target.id, m.ordering_key) AS lock_key
          FROM outbox.messages m
          WHERE m.id = ANY (picked) AND m.ordering_key IS NOT NULL
          ORDER BY 2, 1) k;

    INSERT INTO outbox.deliveries
        (message_id, endpoint_id, tenant_id, ordering_key, status, next_attempt_at)
    SELECT m.id, target.id, m.tenant_id, m.ordering_key, 'pending',
           CASE WHEN m.ordering_key IS NULL THEN now()
                WHEN row_number() OVER (PARTITION BY m.ordering_key ORDER BY m.id) = 1
                     AND NOT EXISTS (
                         SELECT 1 FROM outbox.deliveries p
                         WHERE p.endpoint_id = target.id
                           AND p.ordering_key = m.ordering_key
                           AND p.message_id < m.id
                           AND p.status IN ('pending', 'in_flight', 'dead')
                           AND (p.status <> 'dead' OR target.block_on_dead))
                THEN now()
                ELSE 'infinity'
           END
    FROM outbox.messages m
    WHERE m.id = ANY (picked)
    ORDER BY m.id
    ON CONFLICT ON CONSTRAINT delivery_once_per_endpoint DO NOTHING;
    GET DIAGNOSTICS made = ROW_COUNT;

    PERFORM outbox.record_event('endpoint.recovered', target.id, NULL,
        jsonb_build_object('since', since, 'until', until, 'event_types', types, 'deliveries', made)
        || outbox.triggered(triggered_by));
    IF made > 0 THEN
        PERFORM pg_notify('outboxd_wakeup', '');
    END IF;
    RETURN made;
END
$$;


CREATE OR REPLACE FUNCTION outbox.keep_endpoints_with_deliveries() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    -- Wait for routing in progress, whose deliveries the check must see.
    PERFORM pg_advisory_xact_lock(1868724229, 0);  -- 0x6F627805
    IF EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.endpoint_id = OLD.id) THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has deliveries and cannot be %', OLD.id,
                CASE TG_OP WHEN 'DELETE' THEN 'deleted' ELSE 'renamed' END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Disable it instead (UPDATE outbox.endpoints SET enabled = false ...); '
                         'its deliveries go when the retention purge deletes them.';
    END IF;
    -- Messages that name it and wait to be routed (the sidecar was down,
    -- say) would be routed to nothing. One probe per partial index that
    -- holds unrouted messages.
    IF EXISTS (SELECT 1 FROM outbox.messages m
               WHERE NOT m.routed AND m.deliver_after IS NULL AND m.ordering_key IS NULL
                 AND m.endpoint_id = OLD.id)
       OR EXISTS (SELECT 1 FROM outbox.messages m
                  WHERE NOT m.routed AND m.deliver_after IS NOT NULL AND m.ordering_key IS NULL
                    AND m.endpoint_id = OLD.id)
       OR EXISTS (SELECT 1 FROM outbox.messages m
                  WHERE NOT m.routed AND m.ordering_key IS NOT NULL AND m.endpoint_id = OLD.id) THEN
        RAISE EXCEPTION 'outbox.endpoints: messages for endpoint "%" wait to be routed; it cannot be %', OLD.id,
                CASE TG_OP WHEN 'DELETE' THEN 'deleted' ELSE 'renamed' END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Disable it instead (UPDATE outbox.endpoints SET enabled = false ...), '
                         'or start outboxd so that they are routed first.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;


CREATE OR REPLACE FUNCTION outbox.check_endpoint_tenant() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF NEW.tenant_id IS NOT NULL
       AND (btrim(NEW.tenant_id) = '' OR octet_length(NEW.tenant_id) > 256 OR NEW.tenant_id ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'outbox.endpoints: tenant_id "%" of endpoint "%" is empty, longer than 256 bytes or has control characters',
                outbox.shown(NEW.tenant_id), NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Name the customer the endpoint belongs to, or leave tenant_id NULL for none.';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
        -- Wait for routing in progress, whose deliveries the check must see.
        PERFORM pg_advisory_xact_lock(1868724229, 0);  -- 0x6F627805
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
       AND (EXISTS (SELECT 1 FROM outbox.deliveries d
                    WHERE d.endpoint_id = OLD.id AND d.status IN ('pending', 'in_flight'))
            OR EXISTS (SELECT 1 FROM outbox.messages m WHERE NOT m.routed AND m.endpoint_id = OLD.id)) THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has deliveries in progress and cannot move to another tenant', OLD.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Disable it, let its deliveries finish (or cancel them), then change tenant_id; '
                         'or create a new endpoint for the other tenant.';
    END IF;
    RETURN NEW;
END
$$;
