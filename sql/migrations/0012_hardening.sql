-- Hardening after a security and reliability review (issue 15).
--
-- - Every function of schema outbox runs with search_path pinned to
--   pg_catalog, pg_temp (see the end of this file): a role that can create
--   objects in a schema on the caller's search_path (public, on PostgreSQL
--   13 and 14) could otherwise shadow a built-in such as jsonb_build_object
--   with a better-matching function of its own, and have it run with the
--   rights of whoever fired the trigger (the sidecar, reading secrets).
-- - Writers insert only the columns that are theirs: not `id` (OVERRIDING
--   SYSTEM VALUE would let them take ids ahead of the sequence, breaking
--   every later insert and the order of ordering keys), not `created_at`.
-- - The retention purge of messages runs as a narrow SECURITY DEFINER
--   function, so outbox_sidecar needs neither UPDATE nor DELETE on
--   messages (its row locks needed UPDATE, which it never had).
-- - Ordering-key locks live in outboxd's own advisory-lock space (the
--   two-int form), and the outcome writer only tries them. (Producers take
--   them too until 0013, which moves their part, and the checks of
--   messages, out of the fan-out and check triggers it replaces.)
-- - Endpoint input is checked at insert with outboxd's own messages (a
--   constraint's DETAIL would echo the row, secrets included), with length
--   caps, and refusing what HTTP forbids (control characters, framing and
--   hop-by-hop headers).
-- - outbox.adopt passes the generated trigger body as a quoted literal: a
--   column name could end a fixed dollar-quote tag and append statements.

-- ---------------------------------------------------------------------------
-- Shown in error messages: control characters replaced, at most 64
-- characters. Input echoed back must not be able to forge log lines.
CREATE FUNCTION outbox.shown(value text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN length(value) > 64
                THEN left(regexp_replace(value, '[[:cntrl:]]', '?', 'g'), 64) || '...'
                ELSE regexp_replace(value, '[[:cntrl:]]', '?', 'g')
           END
$$;

-- ---------------------------------------------------------------------------
-- Endpoints: every rule checked here, before the table's constraints, so a
-- violation never reaches PostgreSQL's "Failing row contains (...)" detail.
-- Caps: id 128 characters, url 2048 bytes, 10 secrets, event types 256
-- bytes each, timeout_ms 1..300000, max_in_flight 1..10000, 32 headers of
-- names up to 256 and values up to 8192 bytes.
CREATE OR REPLACE FUNCTION outbox.check_endpoint() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    scheme text := lower(substring(NEW.url FROM '^([A-Za-z][A-Za-z0-9+.-]*):'));
    secret text;
    event_type text;
    header record;
    n integer := 0;
BEGIN
    IF NEW.id IS NULL OR NEW.id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint id "%" is not valid', coalesce(outbox.shown(NEW.id), 'NULL')
            USING ERRCODE = 'check_violation',
                  HINT = 'An id is 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit, e.g. billing.';
    END IF;
    IF NEW.url IS NULL THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has no url', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Use an absolute URL such as https://hooks.example.com/outbox.';
    END IF;
    IF scheme IS DISTINCT FROM 'http' AND scheme IS DISTINCT FROM 'https' THEN
        RAISE EXCEPTION 'outbox.endpoints: url of endpoint "%" has scheme "%"; only http and https are allowed',
                NEW.id, outbox.shown(coalesce(scheme, ''))
            USING ERRCODE = 'check_violation',
                  HINT = 'Use an absolute URL such as https://hooks.example.com/outbox.';
    END IF;
    IF NEW.url !~* '^https?://[^/?#[:space:]]+' THEN
        RAISE EXCEPTION 'outbox.endpoints: url of endpoint "%" has no host', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Use an absolute URL such as https://hooks.example.com/outbox.';
    END IF;
    IF NEW.url ~ '[[:space:][:cntrl:]]' OR octet_length(NEW.url) > 2048 THEN
        RAISE EXCEPTION 'outbox.endpoints: url of endpoint "%" contains white space or control characters, or is longer than 2048 bytes', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Percent-encode spaces and other special characters in the URL.';
    END IF;
    IF NEW.secrets IS NULL OR cardinality(NEW.secrets) = 0 THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has no secret', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Every endpoint signs with at least one secret: outboxd keygen --hmac prints a whsec_ secret.';
    END IF;
    IF cardinality(NEW.secrets) > 10 THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has % secrets; at most 10 are allowed', NEW.id, cardinality(NEW.secrets)
            USING ERRCODE = 'check_violation',
                  HINT = 'Drop secrets that no receiver uses any more (outboxd endpoint rotate-secret --drop-old).';
    END IF;
    FOREACH secret IN ARRAY NEW.secrets LOOP
        n := n + 1;
        IF secret IS NULL OR NOT outbox.secret_is_valid(secret) THEN
            RAISE EXCEPTION 'outbox.endpoints: secret #% of endpoint "%" is malformed', n, NEW.id
                USING ERRCODE = 'check_violation',
                      HINT = 'A secret is whsec_ followed by the standard base64 of 24 to 64 random bytes '
                             '(outboxd keygen --hmac prints one), or a whsk_ ed25519 key (outboxd keygen).';
        END IF;
    END LOOP;
    IF NEW.event_types IS NOT NULL THEN
        FOREACH event_type IN ARRAY NEW.event_types LOOP
            IF event_type IS NULL OR btrim(event_type) = '' OR octet_length(event_type) > 256
               OR event_type ~ '[[:cntrl:]]' THEN
                RAISE EXCEPTION 'outbox.endpoints: event type "%" of endpoint "%" is empty, longer than 256 bytes or has control characters',
                        coalesce(outbox.shown(event_type), 'NULL'), NEW.id
                    USING ERRCODE = 'check_violation',
                          HINT = 'List event type names such as order.created, or set event_types to NULL for every type.';
            END IF;
        END LOOP;
    END IF;
    IF NEW.timeout_ms IS NOT NULL AND NEW.timeout_ms NOT BETWEEN 1 AND 300000 THEN
        RAISE EXCEPTION 'outbox.endpoints: timeout_ms of endpoint "%" is %; it must be between 1 and 300000 (5 minutes)',
                NEW.id, NEW.timeout_ms
            USING ERRCODE = 'check_violation',
                  HINT = 'NULL uses the sidecar''s --request-timeout. outboxd also caps it at --lease minus 5 s.';
    END IF;
    IF NEW.max_in_flight IS NULL OR NEW.max_in_flight NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'outbox.endpoints: max_in_flight of endpoint "%" is %; it must be between 1 and 10000',
                NEW.id, coalesce(NEW.max_in_flight::text, 'NULL')
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.rate_limit IS NOT NULL
       AND (NEW.rate_limit <= 0 OR NEW.rate_limit = 'NaN' OR NEW.rate_limit = 'Infinity') THEN
        RAISE EXCEPTION 'outbox.endpoints: rate_limit of endpoint "%" is %; it must be a positive number of requests per second',
                NEW.id, NEW.rate_limit
            USING ERRCODE = 'check_violation',
                  HINT = 'NULL means no rate limit.';
    END IF;
    IF NEW.headers IS NULL OR jsonb_typeof(NEW.headers) <> 'object' THEN
        RAISE EXCEPTION 'outbox.endpoints: headers of endpoint "%" must be a JSON object', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'e.g. {"authorization": "Bearer ..."}; {} for none.';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(NEW.headers)) > 32 THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" has more than 32 headers', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    -- Values are never shown: they may be credentials.
    FOR header IN SELECT h.key, h.value FROM jsonb_each(NEW.headers) h ORDER BY h.key LOOP
        IF header.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' OR length(header.key) > 256 THEN
            RAISE EXCEPTION 'outbox.endpoints: header name "%" of endpoint "%" is not a valid HTTP header name',
                    outbox.shown(header.key), NEW.id
                USING ERRCODE = 'check_violation',
                      HINT = 'A header name is 1 to 256 letters, digits and !#$%&''*+.^_`|~- (no spaces, colons or control characters).';
        END IF;
        IF lower(header.key) IN ('host', 'content-length', 'transfer-encoding', 'connection',
                                 'keep-alive', 'te', 'trailer', 'upgrade', 'expect',
                                 'content-type', 'content-encoding', 'user-agent')
           OR lower(header.key) LIKE 'proxy-%' OR lower(header.key) LIKE 'webhook-%' THEN
            RAISE EXCEPTION 'outbox.endpoints: header "%" of endpoint "%" may not be set per endpoint', header.key, NEW.id
                USING ERRCODE = 'check_violation',
                      HINT = 'Host, framing (content-length, transfer-encoding, ...), hop-by-hop and proxy headers belong to HTTP; '
                             'content-type, user-agent and webhook-* are set by outboxd.';
        END IF;
        IF jsonb_typeof(header.value) <> 'string' THEN
            RAISE EXCEPTION 'outbox.endpoints: header "%" of endpoint "%" must be a string', header.key, NEW.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF (header.value #>> '{}') ~ '[\x01-\x08\x0a-\x1f\x7f]' OR octet_length(header.value #>> '{}') > 8192 THEN
            RAISE EXCEPTION 'outbox.endpoints: value of header "%" of endpoint "%" contains a control character (CR, LF, ...) or is longer than 8192 bytes',
                    header.key, NEW.id
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF NEW.ca_pem IS NOT NULL AND position('-----BEGIN CERTIFICATE-----' IN NEW.ca_pem) = 0 THEN
        RAISE EXCEPTION 'outbox.endpoints: ca_pem of endpoint "%" holds no PEM certificate', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Store the CA certificate(s) as PEM text: -----BEGIN CERTIFICATE----- ...';
    END IF;
    IF NEW.client_cert_pem IS NOT NULL AND position('-----BEGIN CERTIFICATE-----' IN NEW.client_cert_pem) = 0 THEN
        RAISE EXCEPTION 'outbox.endpoints: client_cert_pem of endpoint "%" holds no PEM certificate', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Store the client certificate chain as PEM text: -----BEGIN CERTIFICATE----- ...';
    END IF;
    IF NEW.client_key_pem IS NOT NULL AND NEW.client_key_pem !~ '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' THEN
        RAISE EXCEPTION 'outbox.endpoints: client_key_pem of endpoint "%" holds no PEM private key', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Store the key as PEM text: -----BEGIN PRIVATE KEY----- (PKCS#8), RSA or EC.';
    END IF;
    IF (NEW.client_cert_pem IS NULL) <> (NEW.client_key_pem IS NULL) THEN
        RAISE EXCEPTION 'outbox.endpoints: endpoint "%" needs both client_cert_pem and client_key_pem, or neither', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- Every checked column fires it; the sidecar's writes (health, enabled,
-- rate tokens) do not.
DROP TRIGGER endpoints_check ON outbox.endpoints;
CREATE TRIGGER endpoints_check
    BEFORE INSERT OR UPDATE OF id, url, secrets, event_types, timeout_ms, max_in_flight, rate_limit,
                               headers, ca_pem, client_cert_pem, client_key_pem
    ON outbox.endpoints
    FOR EACH ROW EXECUTE FUNCTION outbox.check_endpoint();

-- ---------------------------------------------------------------------------
-- Writers insert the columns that are theirs, nothing else.
REVOKE INSERT ON outbox.messages FROM outbox_writer;
GRANT INSERT (event_id, event_type, payload, endpoint_id, ordering_key, deliver_after)
    ON outbox.messages TO outbox_writer;

-- ---------------------------------------------------------------------------
-- One retention page of messages: among up to page_size messages after id
-- after_id, delete those older than older_than_secs with no delivery left
-- (all purged, or none were ever fanned out). Keyset paging, as
-- sql/queries/deliveries_purge.sql. Rows someone holds a lock on are
-- skipped, not waited for: a lock on an old message means a delivery is
-- being created for it.
--
-- SECURITY DEFINER because locking rows needs UPDATE, which the sidecar has
-- no business having on messages; this function is all it may do to them.
CREATE FUNCTION outbox.purge_messages(after_id bigint, older_than_secs double precision, page_size bigint)
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
REVOKE ALL ON FUNCTION outbox.purge_messages(bigint, double precision, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION outbox.purge_messages(bigint, double precision, bigint) TO outbox_sidecar;
REVOKE DELETE ON outbox.messages FROM outbox_sidecar;

-- ---------------------------------------------------------------------------
-- Ordering-key locks. Advisory locks are shared by every role of the
-- database, so outboxd keeps to a space of its own: the two-int form with
-- a fixed first key (0x6F627801, "ob" x01), distinct from the one-bigint
-- form applications usually use. Producers wait for a key's lock (from
-- their insert to their commit); the outcome writer only tries it, and
-- writes a keyed outcome later when someone else holds it, so a stranger's
-- lock (or, until 0013, a producer's long transaction) delays that key alone.
CREATE FUNCTION outbox.ordering_lock_key(endpoint_id text, ordering_key text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtext(endpoint_id || chr(31) || ordering_key)
$$;

-- PL/pgSQL: called once per key, and a SQL function that cannot be
-- inlined (a pinned search_path prevents it) is planned at every call.
CREATE FUNCTION outbox.lock_ordering_key(endpoint_id text, ordering_key text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1868724225, outbox.ordering_lock_key(endpoint_id, ordering_key));
END
$$;

CREATE FUNCTION outbox.try_lock_ordering_key(endpoint_id text, ordering_key text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN pg_try_advisory_xact_lock(1868724225, outbox.ordering_lock_key(endpoint_id, ordering_key));
END
$$;

-- As in 0006, with the new lock.
CREATE OR REPLACE FUNCTION outbox.promote_next_in_key() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.status = 'dead'
       AND (SELECT e.block_on_dead FROM outbox.endpoints e WHERE e.id = NEW.endpoint_id) THEN
        RETURN NULL;
    END IF;
    -- Re-entrant: the outcome writer already holds it. Taken here too so
    -- that cancel(), replay and manual updates are just as safe. Taking it
    -- waits for a producer of this key to commit; the UPDATE below then
    -- runs with a fresh snapshot and sees that producer's delivery.
    PERFORM outbox.lock_ordering_key(NEW.endpoint_id, NEW.ordering_key);
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

-- ---------------------------------------------------------------------------
-- adopt, as in 0007, with two changes: the generated body is passed as a
-- quoted literal (%L), so no column name can end it; and the owner's right
-- to insert is checked per column, as writers now get it.
CREATE OR REPLACE FUNCTION outbox.adopt(source regclass, mapping jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    effective jsonb;
    previous outbox.adoptions%ROWTYPE;
    fn name;
    body text;
    trig constant name := 'outboxd_adopt';
BEGIN
    SELECT c.relkind, c.relname, c.relowner, n.nspname INTO rel
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = adopt.source;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'outbox.adopt: % is not a table', source
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF rel.nspname = 'outbox' THEN
        RAISE EXCEPTION 'outbox.adopt: % belongs to outboxd; adopt your application''s own outbox table', source
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_has_role(rel.relowner, 'MEMBER') THEN
        RAISE EXCEPTION 'outbox.adopt: only the owner of % (%) or a superuser may adopt it', source, rel.relowner::regrole
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Waits for inserts in progress and holds new ones until commit: every
    -- row is either before the adoption (not sent) or after it (sent once).
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', source);
    effective := outbox.adoption_mapping(source, mapping);
    IF NOT (has_schema_privilege(rel.relowner, 'outbox', 'USAGE')
            AND (SELECT bool_and(has_column_privilege(rel.relowner, 'outbox.messages', c, 'INSERT'))
                 FROM unnest(ARRAY['event_id', 'event_type', 'payload', 'ordering_key', 'endpoint_id',
                                   'deliver_after']) c)) THEN
        RAISE EXCEPTION 'outbox.adopt: the owner of % (%) cannot insert into outbox.messages', source, rel.relowner::regrole
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The adopting trigger runs as the table''s owner: grant it the outbox_writer role.';
    END IF;
    PERFORM outbox.drop_stale_adoptions();

    SELECT * INTO previous FROM outbox.adoptions a WHERE a.source = adopt.source FOR UPDATE;
    IF FOUND THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', previous.trigger_name, source);
        EXECUTE format('DROP FUNCTION IF EXISTS outbox.%I()', previous.function_name);
    END IF;

    -- ASCII only, so the name stays under 63 bytes; the oid makes it unique.
    fn := format('adopted_%s_%s',
                 left(regexp_replace(rel.nspname || '_' || rel.relname, '[^A-Za-z0-9_]+', '_', 'g'), 40),
                 source::oid);
    body := format($body$
        BEGIN
            -- An empty statement would still fire fan-out and the NOTIFY.
            PERFORM FROM outboxd_adopted_rows LIMIT 1;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            INSERT INTO outbox.messages
                (event_id, event_type, payload, ordering_key, endpoint_id, deliver_after)
            SELECT %s
            FROM outboxd_adopted_rows n;
            RETURN NULL;
        END
        $body$, outbox.adoption_select_list(source, effective));
    EXECUTE format('CREATE FUNCTION outbox.%I() RETURNS trigger '
                   'LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
                   fn, body);
    EXECUTE format('REVOKE ALL ON FUNCTION outbox.%I() FROM PUBLIC', fn);
    EXECUTE format('ALTER FUNCTION outbox.%I() OWNER TO %s', fn, rel.relowner::regrole);
    EXECUTE format('COMMENT ON FUNCTION outbox.%I() IS %L', fn,
                   format('outboxd: feeds outbox.messages from %s (outbox.adopt)', source));
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS outboxd_adopted_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION outbox.%I()',
                   trig, source, fn);
    EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', trig, source,
                   'outboxd: every inserted row becomes an outbox.messages row (outbox.adopt)');

    INSERT INTO outbox.adoptions AS a (source, mapping, function_name, trigger_name)
    VALUES (adopt.source, effective, fn, trig)
    ON CONFLICT ON CONSTRAINT adoptions_pkey DO UPDATE
        SET mapping = excluded.mapping,
            function_name = excluded.function_name,
            trigger_name = excluded.trigger_name;
    RETURN effective;
END
$$;

-- ---------------------------------------------------------------------------
-- Pin search_path on every function of the schema that does not pin it yet
-- (the generated adopt functions already do). Functions added by later
-- migrations declare it themselves; a test checks that all of them do.
DO $pin$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'outbox'::regnamespace
          AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$pin$;
