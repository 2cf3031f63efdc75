-- Recovery tools for operators (issue 19): resend, recover, a retry
-- schedule per endpoint, and replays that say who asked.
--
-- - outbox.resend(delivery_id, triggered_by): send a delivered, dead or
--   cancelled delivery again (Svix "resend"). The row is reused (one
--   delivery per message and endpoint); its retry schedule restarts
--   without reusing attempt numbers, as replay does.
-- - outbox.recover(endpoint_id, since, until, event_types, triggered_by):
--   give an endpoint the messages of its tenant it has no delivery for,
--   written in [since, until), of the given event types (default: those
--   it subscribes to), including messages older than the endpoint (Svix
--   "recover", Convoy's batch retry).
-- - outbox.set_retry_schedule(endpoint_id, schedule, triggered_by): a
--   schedule (interval[]) that overrides the sidecar's
--   OUTBOXD_RETRY_SCHEDULE for this endpoint, its length the endpoint's
--   maximum number of attempts; NULL goes back to the sidecar's.
-- - outbox.replay(delivery_id, triggered_by) and
--   outbox.replay_dead(endpoint_id, since, triggered_by): the replays of
--   0003, recorded.
--
-- Each records an outbox.events row with `triggered_by` (free text: "cli",
-- "console", a ticket number) and `role` (the session's login). None
-- touches an in-flight delivery, so the outcome writer's fence (lease
-- owner, attempt, lease expiry) holds: a worker's outcome lands as before.
-- Keyed deliveries take their (endpoint, key) lock first, as routing and
-- the outcome writer do.
--
-- They are SECURITY DEFINER, executable by outbox_sidecar (the console of
-- `outboxd run` uses the sidecar's login) and by the schema's owner, not
-- by writers or tenant readers.

-- ---------------------------------------------------------------------------
ALTER TABLE outbox.events DROP CONSTRAINT event_kind_known;
ALTER TABLE outbox.events ADD CONSTRAINT event_kind_known CHECK (kind IN (
    'endpoint.disabled', 'endpoint.enabled',
    'delivery.dead', 'delivery.replay_succeeded',
    'delivery.replayed', 'delivery.resent', 'endpoint.dead_replayed',
    'endpoint.recovered', 'endpoint.retry_schedule_set'));

-- Who asked, for the event's detail.
CREATE FUNCTION outbox.triggered(triggered_by text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('triggered_by', coalesce(outbox.shown(triggered_by), 'sql'),
                              'role', session_user::text)
$$;

-- ---------------------------------------------------------------------------
-- Retry schedule per endpoint. NULL: the sidecar's. Checked by a trigger
-- with outboxd's own message (a constraint's DETAIL would echo the row,
-- secrets included).
ALTER TABLE outbox.endpoints ADD COLUMN retry_schedule interval[];

CREATE FUNCTION outbox.check_retry_schedule() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.retry_schedule IS NOT NULL
       AND (cardinality(NEW.retry_schedule) NOT BETWEEN 1 AND 50
            OR array_position(NEW.retry_schedule, NULL) IS NOT NULL
            OR NOT (interval '0' <= ALL (NEW.retry_schedule))
            OR NOT (interval '7 days' >= ALL (NEW.retry_schedule))) THEN
        RAISE EXCEPTION 'outbox.endpoints: retry_schedule of endpoint "%" must list 1 to 50 delays between 0 and 7 days', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'e.g. ARRAY[''0s'', ''10s'', ''5m'', ''1h'']::interval[]; NULL uses the sidecar''s --retry-schedule.';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION outbox.check_retry_schedule() FROM PUBLIC;

CREATE TRIGGER endpoints_check_retry_schedule
    BEFORE INSERT OR UPDATE OF retry_schedule ON outbox.endpoints
    FOR EACH ROW EXECUTE FUNCTION outbox.check_retry_schedule();

CREATE FUNCTION outbox.set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    previous interval[];
BEGIN
    SELECT e.retry_schedule INTO previous
    FROM outbox.endpoints e WHERE e.id = set_retry_schedule.endpoint_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox.set_retry_schedule: unknown endpoint "%"', outbox.shown(endpoint_id)
            USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE outbox.endpoints e
    SET retry_schedule = schedule, updated_at = now()
    WHERE e.id = set_retry_schedule.endpoint_id;
    PERFORM outbox.record_event('endpoint.retry_schedule_set', endpoint_id, NULL,
        jsonb_build_object('schedule', schedule::text[], 'previous', previous::text[])
        || outbox.triggered(triggered_by));
END
$$;

-- ---------------------------------------------------------------------------
-- Replays, recorded. The one-argument forms of 0003 stay as they were.
CREATE FUNCTION outbox.replay(delivery_id bigint, triggered_by text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    endpoint text;
BEGIN
    UPDATE outbox.deliveries d
    SET status = 'pending',
        next_attempt_at = now(),
        replay_base = d.attempts,
        replayed_at = now(),
        updated_at = now()
    WHERE d.id = replay.delivery_id AND d.status = 'dead'
    RETURNING d.endpoint_id INTO endpoint;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM outbox.record_event('delivery.replayed', endpoint, delivery_id, outbox.triggered(triggered_by));
    PERFORM pg_notify('outboxd_wakeup', '');
    RETURN true;
END
$$;

CREATE FUNCTION outbox.replay_dead(endpoint_id text, since timestamptz, triggered_by text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    replayed integer;
BEGIN
    WITH done AS (
        UPDATE outbox.deliveries d
        SET status = 'pending',
            next_attempt_at = now(),
            replay_base = d.attempts,
            replayed_at = now(),
            updated_at = now()
        WHERE d.endpoint_id = replay_dead.endpoint_id
          AND d.status = 'dead'
          AND d.updated_at >= replay_dead.since
        RETURNING 1
    )
    SELECT count(*)::integer INTO replayed FROM done;
    IF replayed > 0 THEN
        PERFORM outbox.record_event('endpoint.dead_replayed', endpoint_id, NULL,
            jsonb_build_object('since', since, 'deliveries', replayed) || outbox.triggered(triggered_by));
        PERFORM pg_notify('outboxd_wakeup', '');
    END IF;
    RETURN replayed;
END
$$;

-- ---------------------------------------------------------------------------
-- Resend one delivery, whatever it became (delivered, dead, cancelled).
-- Pending and in-flight deliveries are left alone (false): they are on
-- their way, and an in-flight one's outcome must still land.
--
-- A keyed delivery sent again goes before the later messages of its key
-- that have not gone yet (the claim lets none of them pass an earlier open
-- delivery); one of them already in flight is not recalled.
CREATE FUNCTION outbox.resend(delivery_id bigint, triggered_by text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
BEGIN
    SELECT d.endpoint_id, d.ordering_key, d.status INTO target
    FROM outbox.deliveries d WHERE d.id = resend.delivery_id;
    IF NOT FOUND OR target.status NOT IN ('delivered', 'dead', 'cancelled') THEN
        RETURN false;
    END IF;
    IF target.ordering_key IS NOT NULL THEN
        PERFORM outbox.lock_ordering_key(target.endpoint_id, target.ordering_key);
    END IF;
    UPDATE outbox.deliveries d
    SET status = 'pending',
        next_attempt_at = now(),
        replay_base = d.attempts,
        replayed_at = now(),
        updated_at = now()
    WHERE d.id = resend.delivery_id AND d.status IN ('delivered', 'dead', 'cancelled');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM outbox.record_event('delivery.resent', target.endpoint_id, delivery_id,
        jsonb_build_object('previous_status', target.status) || outbox.triggered(triggered_by));
    PERFORM pg_notify('outboxd_wakeup', '');
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------
-- Recover: what an endpoint missed. Time ranges over messages need an
-- index; BRIN costs producers next to nothing (messages are written in
-- created_at order) and finds a range's pages.
CREATE INDEX messages_created_at_brin ON outbox.messages USING brin (created_at);

-- Messages already routed only: routing makes the deliveries of the others
-- (and would collide with ours). Each message is share-locked, so the
-- retention purge, which skips locked rows, cannot delete it meanwhile.
-- Keyed deliveries are made as routing makes them: under the (endpoint,
-- key) lock, due only when nothing earlier of the key is open, else
-- waiting ('infinity') for the one before to finish. A recovered message
-- older than one of its key already in flight goes out beside it, as a
-- message routed late does.
CREATE FUNCTION outbox.recover(endpoint_id text, since timestamptz, until timestamptz DEFAULT NULL,
                               event_types text[] DEFAULT NULL, triggered_by text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    target record;
    types text[];
    picked bigint[];
    made integer;
BEGIN
    SELECT e.id, e.tenant_id, e.event_types, e.block_on_dead INTO target
    FROM outbox.endpoints e WHERE e.id = recover.endpoint_id
    FOR KEY SHARE;
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
$fn$;

-- ---------------------------------------------------------------------------
-- Rights: the sidecar's login (the console) and the schema owner.
REVOKE ALL ON FUNCTION outbox.triggered(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.set_retry_schedule(text, interval[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.replay(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.replay_dead(text, timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.resend(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.recover(text, timestamptz, timestamptz, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.set_retry_schedule(text, interval[], text) TO outbox_sidecar;
GRANT EXECUTE ON FUNCTION outbox.replay(bigint, text) TO outbox_sidecar;
GRANT EXECUTE ON FUNCTION outbox.replay_dead(text, timestamptz, text) TO outbox_sidecar;
GRANT EXECUTE ON FUNCTION outbox.resend(bigint, text) TO outbox_sidecar;
GRANT EXECUTE ON FUNCTION outbox.recover(text, timestamptz, timestamptz, text[], text) TO outbox_sidecar;
-- The console shows each attempt's status, duration, error and the
-- receiver's answer, which the sidecar wrote.
GRANT SELECT ON outbox.attempts TO outbox_sidecar;
