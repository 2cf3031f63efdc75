-- Tenants, and routing moved out of the producer's transaction (issue 16).
--
-- Tenants: endpoints and messages carry an optional tenant_id; a message
-- goes only to endpoints of its own tenant (NULL only to NULL). The role
-- outbox_tenant_reader reads one tenant's delivery log, the tenant named
-- by the setting outbox.tenant_id.
--
-- Routing: producers used to create every delivery in their own
-- transaction (the fan-out trigger). Measured with 8 producers on 2 cores,
-- that cost them 2.5x to 3x the insert itself, and every insert scanned
-- every endpoint. Now an insert writes the message alone (routed = false,
-- in a small partial index); the sidecar routes committed messages in
-- batches right before each claim (outbox.route, sent with the claim in
-- one round trip), finding subscribers through outbox.subscriptions, an
-- index of (tenant, event type). What
-- producers still pay for at insert: the checks (including an explicit
-- endpoint's existence and tenant), and, for keyed messages, the key's
-- lock until commit, so that the sidecar routes a key's messages in order.
--
-- Guarantees kept: a rolled-back insert leaves nothing to route; an
-- endpoint created after a message does not receive it (created_at is
-- compared); a message is routed once (row lock, then routed = true);
-- ordering keys keep their order (below); outbox.message_status shows a
-- message not yet routed as one pending row without a delivery.

-- ---------------------------------------------------------------------------
-- Columns.
ALTER TABLE outbox.endpoints ADD COLUMN tenant_id text;
ALTER TABLE outbox.messages ADD COLUMN tenant_id text;
-- Existing messages were fanned out at insert; new ones wait for routing.
ALTER TABLE outbox.messages ADD COLUMN routed boolean NOT NULL DEFAULT true;
ALTER TABLE outbox.messages ALTER COLUMN routed SET DEFAULT false;
-- What to route now: unkeyed messages without deliver_after, from both
-- ends (the oldest, and the newest, so that a bulk insert of one tenant
-- cannot hold up another tenant's next message for long) ...
CREATE INDEX messages_to_route ON outbox.messages (id)
    WHERE NOT routed AND deliver_after IS NULL AND ordering_key IS NULL;
-- ... keyed messages, oldest first (a key's messages are routed in id
-- order, whenever they are due) ...
CREATE INDEX messages_to_route_keyed ON outbox.messages (id)
    WHERE NOT routed AND ordering_key IS NOT NULL;
-- Unkeyed messages scheduled for later are routed when due, so that a
-- bulk of them (reminders for next month) costs nothing until then and
-- never delays what is due now.
CREATE INDEX messages_scheduled ON outbox.messages (deliver_after, id)
    WHERE NOT routed AND deliver_after IS NOT NULL AND ordering_key IS NULL;
-- Copied from the message at routing, so that claims, attempts and the
-- tenant reader's policy need no join.
ALTER TABLE outbox.deliveries ADD COLUMN tenant_id text;
ALTER TABLE outbox.attempts ADD COLUMN tenant_id text;

-- When an endpoint was last disabled (NULL while enabled). Routing comes
-- after the insert, so a message written while its endpoint was enabled
-- still reaches it, pending until it is enabled again, as when the
-- fan-out ran at insert; messages written while it was disabled do not.
ALTER TABLE outbox.endpoints ADD COLUMN disabled_at timestamptz;
UPDATE outbox.endpoints SET disabled_at = updated_at WHERE NOT enabled;

CREATE FUNCTION outbox.on_endpoint_disabling() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.disabled_at := CASE WHEN NEW.enabled THEN NULL ELSE now() END;
    RETURN NEW;
END
$$;

CREATE TRIGGER endpoints_disabling
    BEFORE UPDATE OF enabled ON outbox.endpoints
    FOR EACH ROW WHEN (OLD.enabled IS DISTINCT FROM NEW.enabled)
    EXECUTE FUNCTION outbox.on_endpoint_disabling();

-- Deliveries no longer reference messages and endpoints by foreign key:
-- routing writes thousands of deliveries a second, and each one's two key
-- checks (row locks on the message and the endpoint) cost more than the
-- row itself. What the keys did, triggers do: deleting messages deletes
-- their deliveries (and so their attempts), and an endpoint with
-- deliveries can be neither deleted nor renamed (disable it instead).
ALTER TABLE outbox.deliveries DROP CONSTRAINT deliveries_message_id_fkey;
ALTER TABLE outbox.deliveries DROP CONSTRAINT deliveries_endpoint_id_fkey;

CREATE FUNCTION outbox.delete_deliveries() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM outbox.deliveries d USING gone g WHERE d.message_id = g.id;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION outbox.delete_deliveries() FROM PUBLIC;

CREATE TRIGGER messages_delete_deliveries
    AFTER DELETE ON outbox.messages
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.delete_deliveries();

-- SECURITY DEFINER: whoever may delete endpoints need not read deliveries.
-- Finished deliveries are not indexed by endpoint, so this may scan the
-- table: deleting endpoints is rare, disabling them is the usual way.
CREATE FUNCTION outbox.keep_endpoints_with_deliveries() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.endpoint_id = OLD.id) THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has deliveries and cannot be %', OLD.id,
                CASE TG_OP WHEN 'DELETE' THEN 'deleted' ELSE 'renamed' END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Disable it instead (UPDATE outbox.endpoints SET enabled = false ...); '
                         'its deliveries go when the retention purge deletes them.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION outbox.keep_endpoints_with_deliveries() FROM PUBLIC;

CREATE TRIGGER endpoints_keep_with_deliveries
    BEFORE DELETE ON outbox.endpoints
    FOR EACH ROW EXECUTE FUNCTION outbox.keep_endpoints_with_deliveries();
CREATE TRIGGER endpoints_keep_id_with_deliveries
    BEFORE UPDATE OF id ON outbox.endpoints
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION outbox.keep_endpoints_with_deliveries();

-- ---------------------------------------------------------------------------
-- Subscribers by (tenant, event type): one row per event type an endpoint
-- subscribes to, '' for every type (event_types NULL); tenant_key is the
-- tenant, '' for none. Empty tenants and event types are refused, so ''
-- cannot be mistaken for either. Kept by a trigger on endpoints.
CREATE TABLE outbox.subscriptions (
    tenant_key  text NOT NULL,
    event_type  text NOT NULL,
    endpoint_id text NOT NULL REFERENCES outbox.endpoints (id) ON DELETE CASCADE ON UPDATE CASCADE,
    PRIMARY KEY (tenant_key, event_type, endpoint_id)
);
CREATE INDEX subscriptions_endpoint ON outbox.subscriptions (endpoint_id);

INSERT INTO outbox.subscriptions (tenant_key, event_type, endpoint_id)
SELECT DISTINCT coalesce(e.tenant_id, ''), t.event_type, e.id
FROM outbox.endpoints e
CROSS JOIN LATERAL unnest(coalesce(e.event_types, ARRAY[''])) AS t(event_type);

-- SECURITY DEFINER: whoever may change endpoints keeps their subscriptions.
CREATE FUNCTION outbox.sync_subscriptions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM outbox.subscriptions s WHERE s.endpoint_id IN (OLD.id, NEW.id);
    END IF;
    INSERT INTO outbox.subscriptions (tenant_key, event_type, endpoint_id)
    SELECT DISTINCT coalesce(NEW.tenant_id, ''), t.event_type, NEW.id
    FROM unnest(coalesce(NEW.event_types, ARRAY[''])) AS t(event_type)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION outbox.sync_subscriptions() FROM PUBLIC;

CREATE TRIGGER endpoints_subscriptions
    AFTER INSERT OR UPDATE OF id, tenant_id, event_types ON outbox.endpoints
    FOR EACH ROW EXECUTE FUNCTION outbox.sync_subscriptions();

-- ---------------------------------------------------------------------------
-- Endpoints: the tenant is checked with the other columns, and an
-- endpoint with work in progress cannot move to another tenant (its
-- deliveries were made for the old one). Otherwise as in 0012.
CREATE OR REPLACE FUNCTION outbox.check_endpoint_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.tenant_id IS NOT NULL
       AND (btrim(NEW.tenant_id) = '' OR octet_length(NEW.tenant_id) > 256 OR NEW.tenant_id ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'outbox.endpoints: tenant_id "%" of endpoint "%" is empty, longer than 256 bytes or has control characters',
                outbox.shown(NEW.tenant_id), NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Name the customer the endpoint belongs to, or leave tenant_id NULL for none.';
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
REVOKE ALL ON FUNCTION outbox.check_endpoint_tenant() FROM PUBLIC;

CREATE TRIGGER endpoints_check_tenant
    BEFORE INSERT OR UPDATE OF tenant_id ON outbox.endpoints
    FOR EACH ROW EXECUTE FUNCTION outbox.check_endpoint_tenant();

-- ---------------------------------------------------------------------------
-- Message-key locks: producers hold a key's lock (per tenant) from their
-- insert to their commit, and routing only tries it, so the sidecar never
-- routes a key's later message while an earlier one may still commit.
-- Space 0x6F627802; the (endpoint, key) locks of 0012 are 0x6F627801.
CREATE FUNCTION outbox.message_lock_key(tenant_id text, ordering_key text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtext(coalesce(tenant_id, '') || chr(31) || ordering_key)
$$;

-- PL/pgSQL: called once per row, and a SQL function that cannot be
-- inlined (a pinned search_path prevents it) is planned at every call.
CREATE FUNCTION outbox.lock_message_key(tenant_id text, ordering_key text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1868724226, outbox.message_lock_key(tenant_id, ordering_key));
END
$$;

CREATE FUNCTION outbox.try_lock_message_key(tenant_id text, ordering_key text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN pg_try_advisory_xact_lock(1868724226, outbox.message_lock_key(tenant_id, ordering_key));
END
$$;

-- ---------------------------------------------------------------------------
-- What an insert into outbox.messages checks. A statement trigger over the
-- new rows (0004's check_messages) cost producers a quarter of their rate
-- before doing anything, and half with its checks (8 producers, measured
-- with pgbench). Now:
-- - the rules on the row alone are CHECK constraints, evaluated inline;
--   their names say what is wrong (SQLSTATE 23514). NOT VALID: rows
--   written before this migration are not examined again;
-- - the payload cap is one too, rebuilt when outbox.settings changes;
-- - only a message that names an endpoint or has an ordering key runs a
--   row trigger: the endpoint must exist and belong to the message's
--   tenant, and the key's lock is held until the producer commits.
ALTER TABLE outbox.messages
    ADD CONSTRAINT event_id_max_256_bytes_no_control_characters
        CHECK (octet_length(event_id) <= 256 AND event_id !~ '[[:cntrl:]]') NOT VALID,
    ADD CONSTRAINT event_type_not_blank_max_256_bytes_no_control_chars
        CHECK (btrim(event_type) <> '' AND octet_length(event_type) <= 256 AND event_type !~ '[[:cntrl:]]') NOT VALID,
    ADD CONSTRAINT ordering_key_max_256_bytes
        CHECK (octet_length(ordering_key) <= 256) NOT VALID,
    ADD CONSTRAINT tenant_id_not_blank_max_256_bytes_no_control_chars
        CHECK (btrim(tenant_id) <> '' AND octet_length(tenant_id) <= 256 AND tenant_id !~ '[[:cntrl:]]') NOT VALID,
    ADD CONSTRAINT payload_within_max_payload_bytes
        CHECK (octet_length(payload::text) <= 262144) NOT VALID;
COMMENT ON CONSTRAINT payload_within_max_payload_bytes ON outbox.messages IS
    'The payload''s JSON text (the request body) is at most outbox.settings.max_payload_bytes; rebuilt when that changes.';

-- SECURITY DEFINER: whoever may change the settings rebuilds the check.
-- ALTER TABLE holds the messages table for a moment: inserts wait.
CREATE FUNCTION outbox.apply_payload_cap() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('ALTER TABLE outbox.messages
                        DROP CONSTRAINT payload_within_max_payload_bytes,
                        ADD CONSTRAINT payload_within_max_payload_bytes
                            CHECK (octet_length(payload::text) <= %s) NOT VALID',
                   NEW.max_payload_bytes);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION outbox.apply_payload_cap() FROM PUBLIC;

CREATE TRIGGER settings_payload_cap
    AFTER INSERT OR UPDATE OF max_payload_bytes ON outbox.settings
    FOR EACH ROW EXECUTE FUNCTION outbox.apply_payload_cap();
-- A cap changed before this migration.
UPDATE outbox.settings SET max_payload_bytes = max_payload_bytes;

CREATE FUNCTION outbox.accept_message() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner record;
BEGIN
    IF NEW.endpoint_id IS NOT NULL THEN
        SELECT e.tenant_id INTO owner FROM outbox.endpoints e WHERE e.id = NEW.endpoint_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'outbox.messages: unknown endpoint_id "%"', outbox.shown(NEW.endpoint_id)
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'Insert the endpoint into outbox.endpoints first, or leave endpoint_id NULL to fan out by event_type.';
        END IF;
        IF owner.tenant_id IS DISTINCT FROM NEW.tenant_id THEN
            RAISE EXCEPTION 'outbox.messages: endpoint "%" does not belong to the tenant of event_id "%"',
                    outbox.shown(NEW.endpoint_id), outbox.shown(NEW.event_id)
                USING ERRCODE = 'check_violation',
                      HINT = 'A message goes only to endpoints of its own tenant_id (NULL only to endpoints without one).';
        END IF;
    END IF;
    IF NEW.ordering_key IS NOT NULL THEN
        -- Until commit. A statement inserting several keys takes them in
        -- row order: two that insert the same keys in opposite orders at
        -- the same moment may deadlock (PostgreSQL aborts one).
        PERFORM outbox.lock_message_key(NEW.tenant_id, NEW.ordering_key);
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION outbox.accept_message() FROM PUBLIC;

DROP TRIGGER messages_check ON outbox.messages;
DROP TRIGGER messages_fan_out ON outbox.messages;
DROP FUNCTION outbox.check_messages();
DROP FUNCTION outbox.fan_out();
-- 0006's lock ids, which only the fan-out still took.
DROP FUNCTION outbox.ordering_lock_id(text, text);
CREATE TRIGGER messages_accept
    BEFORE INSERT ON outbox.messages
    FOR EACH ROW WHEN (NEW.endpoint_id IS NOT NULL OR NEW.ordering_key IS NOT NULL)
    EXECUTE FUNCTION outbox.accept_message();

-- ---------------------------------------------------------------------------
-- Routing.

-- The deliveries that messages `ids` should have: an explicit endpoint in
-- whatever state (a disabled one keeps it pending), unless it has moved
-- to another tenant since (then the delivery is recorded dead, with why);
-- otherwise every endpoint of the message's tenant subscribed to its type,
-- created no later than the message and enabled when it was written.
CREATE FUNCTION outbox.route_targets(ids bigint[])
RETURNS TABLE (message_id bigint, endpoint_id text, tenant_id text, ordering_key text,
               due_at timestamptz, refusal text, block_on_dead boolean)
-- PL/pgSQL rather than SQL: its plan is cached per session (a SQL function
-- that cannot be inlined is planned again at every call).
LANGUAGE plpgsql STABLE SET enable_seqscan = off SET jit = off SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT m.id, e.id, m.tenant_id, m.ordering_key, coalesce(m.deliver_after, now()),
           CASE WHEN e.tenant_id IS DISTINCT FROM m.tenant_id
                THEN format('endpoint "%s" moved to another tenant after this message was written', e.id)
           END,
           e.block_on_dead
    FROM outbox.messages m
    JOIN outbox.endpoints e ON e.id = m.endpoint_id
    WHERE m.id = ANY (ids)
    UNION ALL
    -- Two index probes per message, whatever the statistics say (a join
    -- the planner may turn into a scan of every subscription).
    SELECT m.id, e.id, m.tenant_id, m.ordering_key, coalesce(m.deliver_after, now()), NULL, e.block_on_dead
    FROM outbox.messages m
    CROSS JOIN LATERAL (
        SELECT s.endpoint_id FROM outbox.subscriptions s
        WHERE s.tenant_key = coalesce(m.tenant_id, '') AND s.event_type = m.event_type
        UNION ALL
        SELECT s.endpoint_id FROM outbox.subscriptions s
        WHERE s.tenant_key = coalesce(m.tenant_id, '') AND s.event_type = ''
    ) s
    JOIN outbox.endpoints e ON e.id = s.endpoint_id
    WHERE m.id = ANY (ids)
      AND m.endpoint_id IS NULL
      AND e.created_at <= m.created_at
      AND (e.enabled OR e.disabled_at > m.created_at);
END
$$;

-- Routes committed messages into their deliveries: up to max_messages
-- unkeyed ones (half the oldest, half the newest), as many keyed ones
-- (oldest first) and as many scheduled ones that are due; returns how
-- many. Messages another router holds are
-- skipped (it routes them); so are keyed messages whose key a producer
-- (not yet committed) or another router holds: an earlier message of the
-- key may still arrive, and the key waits for it.
CREATE FUNCTION outbox.route(max_messages integer) RETURNS integer
-- Index scans only, whatever the statistics said when the session's plans
-- were made (see outbox.claim in 0014).
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    picked bigint[];
    keyed bigint[];
BEGIN
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
$fn$;

-- Unrouted messages are not purged, however old (the sidecar may have
-- been down); otherwise as in 0012.
CREATE OR REPLACE FUNCTION outbox.purge_messages(after_id bigint, older_than_secs double precision, page_size bigint)
RETURNS TABLE (last_id bigint, deleted bigint, reached_recent boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH page AS (
        SELECT m.id, m.created_at
        FROM outbox.messages m
        WHERE m.id > purge_messages.after_id
        ORDER BY m.id
        LIMIT purge_messages.page_size
    ), doomed AS (
        SELECT m.id
        FROM outbox.messages m
        JOIN page p ON p.id = m.id
        WHERE m.created_at < now() - make_interval(secs => purge_messages.older_than_secs)
          AND m.routed
          AND NOT EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.message_id = m.id)
        FOR UPDATE OF m SKIP LOCKED
    ), gone AS (
        DELETE FROM outbox.messages m USING doomed WHERE m.id = doomed.id RETURNING m.id
    )
    SELECT (SELECT max(p.id) FROM page p),
           (SELECT count(*) FROM gone),
           coalesce((SELECT bool_or(p.created_at >= now() - make_interval(secs => purge_messages.older_than_secs))
                     FROM page p), true)
$$;

-- ---------------------------------------------------------------------------
-- The tenant reader.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = 'outbox_tenant_reader') THEN
        BEGIN
            CREATE ROLE outbox_tenant_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'outboxd needs the role outbox_tenant_reader and may not create it'
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'Have an administrator run CREATE ROLE outbox_tenant_reader NOLOGIN; then run outboxd migrate again.';
        END;
    END IF;
END
$roles$;

-- The tenant the current role may read: NULL (every tenant) unless it is
-- a member of outbox_tenant_reader (checked through the membership
-- catalog, since superusers count as members of every role); for a member,
-- the setting outbox.tenant_id, or, unset, a value no tenant has.
-- (PL/pgSQL, so that its plan is cached per session.)
CREATE FUNCTION outbox.tenant_scope() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (WITH RECURSIVE member_of(oid) AS (
                   SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user
                   UNION
                   SELECT m.roleid FROM pg_auth_members m JOIN member_of o ON m.member = o.oid
               )
               SELECT 1 FROM member_of o JOIN pg_roles r ON r.oid = o.oid
               WHERE r.rolname = 'outbox_tenant_reader') THEN
        RETURN coalesce(nullif(current_setting('outbox.tenant_id', true), ''),
                        E'\x01(outbox.tenant_id is not set)');
    END IF;
    RETURN NULL;
END
$$;

-- A message not yet routed is one row, pending, without a delivery (and
-- without an endpoint unless it names one); tenant_id is new, at the end.
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
       d.updated_at,
       m.tenant_id
FROM outbox.deliveries d
JOIN outbox.messages m ON m.id = d.message_id
WHERE (SELECT outbox.tenant_scope()) IS NULL OR m.tenant_id = (SELECT outbox.tenant_scope())
UNION ALL
SELECT NULL,
       m.id,
       m.event_id,
       m.event_type,
       m.endpoint_id,
       'pending',
       0,
       NULL,
       NULL,
       coalesce(m.deliver_after, m.created_at),
       NULL,
       m.ordering_key,
       m.created_at,
       m.created_at,
       m.tenant_id
FROM outbox.messages m
WHERE NOT m.routed
  AND ((SELECT outbox.tenant_scope()) IS NULL OR m.tenant_id = (SELECT outbox.tenant_scope()));

CREATE OR REPLACE VIEW outbox.endpoint_health AS
SELECT e.id AS endpoint_id,
       e.enabled,
       e.disabled_reason,
       coalesce(s.pending, 0)   AS pending,
       coalesce(s.in_flight, 0) AS in_flight,
       coalesce(s.dead, 0)      AS dead,
       now() - s.oldest_pending AS oldest_pending_age,
       e.last_success_at,
       e.failure_streak,
       e.failing_since,
       e.tenant_id
FROM outbox.endpoints e
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE d.status = 'pending')   AS pending,
           count(*) FILTER (WHERE d.status = 'in_flight') AS in_flight,
           count(*) FILTER (WHERE d.status = 'dead')      AS dead,
           min(d.created_at) FILTER (WHERE d.status = 'pending') AS oldest_pending
    FROM outbox.deliveries d
    WHERE d.endpoint_id = e.id
      AND d.status IN ('pending', 'in_flight', 'dead')
) s ON true
WHERE (SELECT outbox.tenant_scope()) IS NULL OR e.tenant_id = (SELECT outbox.tenant_scope());

-- Attempts: readers see every row as before, a tenant reader its
-- tenant's only. The table's owner (and the purge's cascade, which runs
-- as the owner) are not subject to policies.
ALTER TABLE outbox.attempts ENABLE ROW LEVEL SECURITY;
CREATE POLICY attempts_readers ON outbox.attempts USING (true) WITH CHECK (true);
CREATE POLICY attempts_of_the_tenant ON outbox.attempts AS RESTRICTIVE FOR SELECT
    TO outbox_tenant_reader
    USING (tenant_id = (SELECT outbox.tenant_scope()));

-- ---------------------------------------------------------------------------
-- Rights.
GRANT INSERT (tenant_id) ON outbox.messages TO outbox_writer;
GRANT SELECT (id, tenant_id) ON outbox.endpoints TO outbox_writer;

GRANT USAGE ON SCHEMA outbox TO outbox_tenant_reader;
GRANT SELECT ON outbox.message_status, outbox.endpoint_health, outbox.attempts TO outbox_tenant_reader;

-- The sidecar routes: it reads messages, marks them routed (and may lock
-- them for that), reads subscriptions and creates deliveries.
GRANT SELECT (tenant_id, endpoint_id, routed) ON outbox.messages TO outbox_sidecar;
GRANT UPDATE (routed) ON outbox.messages TO outbox_sidecar;
GRANT SELECT ON outbox.subscriptions TO outbox_sidecar;
GRANT INSERT (message_id, endpoint_id, tenant_id, ordering_key, status, next_attempt_at, last_error)
    ON outbox.deliveries TO outbox_sidecar;
