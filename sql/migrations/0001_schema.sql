-- outboxd core schema: endpoints, messages, deliveries, attempts.
--
-- Applications write only `outbox.messages`; the fan-out trigger turns every
-- inserted message into one `outbox.deliveries` row per target endpoint in
-- the same transaction, so a rolled-back transaction leaves nothing behind
-- and an endpoint added later never receives older messages.
--
-- Runs on PostgreSQL 13 and later (gen_random_uuid() is core since 13).

CREATE TABLE outbox.endpoints (
    id               text PRIMARY KEY
                     CONSTRAINT endpoint_id_format CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    url              text NOT NULL
                     CONSTRAINT endpoint_url_scheme CHECK (url ~* '^https?://[^/?#[:space:]]+'),
    -- Standard Webhooks secrets (whsec_<base64>); every listed secret signs,
    -- so rotation is: add the new secret, later drop the old one.
    secrets          text[] NOT NULL
                     CONSTRAINT endpoint_has_secret CHECK (cardinality(secrets) >= 1),
    -- Subscription filter; NULL means every event type.
    event_types      text[],
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    -- NULL: the sidecar's --request-timeout.
    timeout_ms       integer CONSTRAINT endpoint_timeout_positive CHECK (timeout_ms > 0),
    max_in_flight    integer NOT NULL DEFAULT 16
                     CONSTRAINT endpoint_max_in_flight_positive CHECK (max_in_flight > 0),
    -- Requests per second; NULL means unlimited.
    rate_limit       double precision CONSTRAINT endpoint_rate_limit_positive CHECK (rate_limit > 0),
    -- Extra static request headers, e.g. {"authorization": "Bearer ..."}.
    headers          jsonb NOT NULL DEFAULT '{}'
                     CONSTRAINT endpoint_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox.messages (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Becomes the `webhook-id` header: the same on every retry, so
    -- receivers can deduplicate. A second insert with the same event_id is a
    -- unique violation (23505); use ON CONFLICT (event_id) DO NOTHING to make
    -- producer inserts idempotent.
    event_id       text NOT NULL UNIQUE DEFAULT gen_random_uuid()::text
                   CONSTRAINT message_event_id_not_empty CHECK (event_id <> ''),
    event_type     text NOT NULL
                   CONSTRAINT message_event_type_not_empty CHECK (event_type <> ''),
    payload        jsonb NOT NULL,
    -- Deliver only to this endpoint; NULL fans out to every enabled endpoint
    -- subscribed to event_type.
    endpoint_id    text,
    ordering_key   text,
    deliver_after  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       bigint NOT NULL REFERENCES outbox.messages (id) ON DELETE CASCADE,
    endpoint_id      text NOT NULL REFERENCES outbox.endpoints (id),
    status           text NOT NULL DEFAULT 'pending'
                     CONSTRAINT delivery_status_known
                     CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead', 'cancelled')),
    -- Attempts started so far; the claim increments it, so (lease_owner,
    -- attempts) names one claim and fences its outcome write.
    attempts         integer NOT NULL DEFAULT 0,
    -- When the row is next claimable, in the database's clock: the scheduled
    -- attempt while pending, the lease expiry while in flight (an expired
    -- lease is simply due again), NULL once finished.
    next_attempt_at  timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz GENERATED ALWAYS AS
                     (CASE WHEN status = 'in_flight' THEN next_attempt_at END) STORED,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_once_per_endpoint UNIQUE (message_id, endpoint_id),
    CONSTRAINT delivery_due_while_open
        CHECK ((status IN ('pending', 'in_flight')) = (next_attempt_at IS NOT NULL))
);

-- The claim index: only open rows are in it, so claiming costs the same with
-- ten or ten million finished deliveries in the table.
CREATE INDEX deliveries_due ON outbox.deliveries (next_attempt_at, id)
    WHERE status IN ('pending', 'in_flight');
CREATE INDEX deliveries_endpoint_status ON outbox.deliveries (endpoint_id, status);

-- Open rows are updated two or three times each; vacuum them early.
ALTER TABLE outbox.deliveries SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE TABLE outbox.attempts (
    delivery_id       bigint NOT NULL REFERENCES outbox.deliveries (id) ON DELETE CASCADE,
    attempt           integer NOT NULL,
    started_at        timestamptz NOT NULL,
    duration_ms       integer NOT NULL,
    -- NULL when no response arrived (timeout, connection error).
    status_code       integer,
    -- NULL on success.
    error             text,
    -- At most the first 4 KiB of the response body.
    response_excerpt  text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Fan-out: one delivery per target endpoint, in the inserting transaction.
CREATE FUNCTION outbox.fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
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

    INSERT INTO outbox.deliveries (message_id, endpoint_id, next_attempt_at)
    SELECT n.id, e.id, coalesce(n.deliver_after, now())
    FROM new_messages n
    JOIN outbox.endpoints e
      ON e.id = n.endpoint_id
      OR (n.endpoint_id IS NULL
          AND e.enabled
          AND (e.event_types IS NULL OR n.event_type = ANY (e.event_types)));
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_fan_out
    AFTER INSERT ON outbox.messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.fan_out();

-- Wake-up: a hint, not data. Postgres folds identical notifications of one
-- transaction into one, and NOTIFY takes a database-wide lock at commit, so
-- one per statement and a constant payload.
CREATE FUNCTION outbox.notify_sidecar() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outboxd_wakeup', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_notify
    AFTER INSERT ON outbox.messages
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_sidecar();
