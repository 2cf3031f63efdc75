-- Operating outboxd from SQL: endpoint health, replay and cancel, and an
-- events table that records what an operator may want to react to.

-- Endpoint health, maintained by the outcome writer (one UPDATE per
-- endpoint per written batch, skipped when nothing changes).
ALTER TABLE outbox.endpoints
    ADD COLUMN last_success_at timestamptz,
    -- Consecutive failed attempts since the last success.
    ADD COLUMN failure_streak  integer NOT NULL DEFAULT 0,
    -- When the current streak of failures began; NULL while healthy.
    ADD COLUMN failing_since   timestamptz;

-- Replays restart the retry schedule without reusing attempt numbers (the
-- attempts log is keyed by them): the schedule counts from replay_base.
ALTER TABLE outbox.deliveries
    ADD COLUMN replay_base integer NOT NULL DEFAULT 0,
    ADD COLUMN replayed_at timestamptz;

CREATE VIEW outbox.endpoint_health AS
SELECT e.id AS endpoint_id,
       e.enabled,
       e.disabled_reason,
       coalesce(s.pending, 0)   AS pending,
       coalesce(s.in_flight, 0) AS in_flight,
       coalesce(s.dead, 0)      AS dead,
       now() - s.oldest_pending AS oldest_pending_age,
       e.last_success_at,
       e.failure_streak,
       e.failing_since
FROM outbox.endpoints e
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE d.status = 'pending')   AS pending,
           count(*) FILTER (WHERE d.status = 'in_flight') AS in_flight,
           count(*) FILTER (WHERE d.status = 'dead')      AS dead,
           min(d.created_at) FILTER (WHERE d.status = 'pending') AS oldest_pending
    FROM outbox.deliveries d
    WHERE d.endpoint_id = e.id
      AND d.status IN ('pending', 'in_flight', 'dead')
) s ON true;

-- Operational events, for applications that react with a trigger or LISTEN
-- on channel 'outbox_events' (payload: the event's kind and id as JSON).
CREATE TABLE outbox.events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    kind         text NOT NULL CONSTRAINT event_kind_known CHECK (kind IN (
                     'endpoint.disabled', 'endpoint.enabled',
                     'delivery.dead', 'delivery.replay_succeeded')),
    endpoint_id  text,
    delivery_id  bigint,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_occurred_at ON outbox.events (occurred_at);

CREATE FUNCTION outbox.record_event(kind text, endpoint_id text, delivery_id bigint, detail jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO outbox.events (kind, endpoint_id, delivery_id, detail)
    VALUES (kind, endpoint_id, delivery_id, coalesce(detail, '{}'))
    RETURNING id INTO new_id;
    PERFORM pg_notify('outbox_events', json_build_object('id', new_id, 'kind', kind)::text);
END
$$;

CREATE FUNCTION outbox.on_endpoint_toggled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM outbox.record_event(
        CASE WHEN NEW.enabled THEN 'endpoint.enabled' ELSE 'endpoint.disabled' END,
        NEW.id, NULL,
        jsonb_build_object('reason', NEW.disabled_reason));
    RETURN NULL;
END
$$;

CREATE TRIGGER endpoints_toggled
    AFTER UPDATE OF enabled ON outbox.endpoints
    FOR EACH ROW WHEN (OLD.enabled IS DISTINCT FROM NEW.enabled)
    EXECUTE FUNCTION outbox.on_endpoint_toggled();

-- Row triggers whose WHEN clause is false cost no function call, so the
-- hot path (pending -> in_flight -> delivered) pays almost nothing.
CREATE FUNCTION outbox.on_delivery_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'dead' THEN
        PERFORM outbox.record_event('delivery.dead', NEW.endpoint_id, NEW.id,
            jsonb_build_object('attempts', NEW.attempts, 'last_status_code', NEW.last_status_code,
                               'last_error', NEW.last_error));
    ELSE
        PERFORM outbox.record_event('delivery.replay_succeeded', NEW.endpoint_id, NEW.id,
            jsonb_build_object('attempts', NEW.attempts, 'replayed_at', NEW.replayed_at));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_finished
    AFTER UPDATE OF status ON outbox.deliveries
    FOR EACH ROW WHEN (
        OLD.status IS DISTINCT FROM NEW.status
        AND (NEW.status = 'dead'
             OR (NEW.status = 'delivered' AND NEW.replayed_at IS NOT NULL)))
    EXECUTE FUNCTION outbox.on_delivery_finished();

-- Replay one dead delivery: it becomes pending at once with a fresh retry
-- schedule. Returns false when the delivery is not dead.
CREATE FUNCTION outbox.replay(delivery_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH replayed AS (
        UPDATE outbox.deliveries d
        SET status = 'pending',
            next_attempt_at = now(),
            replay_base = d.attempts,
            replayed_at = now(),
            updated_at = now()
        WHERE d.id = replay.delivery_id AND d.status = 'dead'
        RETURNING 1
    )
    SELECT count(*) > 0 FROM replayed
$$;

-- Replay an endpoint's deliveries that died at or after `since`; returns
-- how many.
CREATE FUNCTION outbox.replay_dead(endpoint_id text, since timestamptz) RETURNS integer
LANGUAGE sql AS $$
    WITH replayed AS (
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
    SELECT count(*)::integer FROM replayed
$$;

-- Cancel a pending or dead delivery; in-flight ones cannot be recalled.
-- Returns false when the delivery is in another state.
CREATE FUNCTION outbox.cancel(delivery_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH cancelled AS (
        UPDATE outbox.deliveries d
        SET status = 'cancelled',
            next_attempt_at = NULL,
            updated_at = now()
        WHERE d.id = cancel.delivery_id AND d.status IN ('pending', 'dead')
        RETURNING 1
    )
    SELECT count(*) > 0 FROM cancelled
$$;
