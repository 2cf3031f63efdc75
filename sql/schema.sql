-- The outbox schema as sql/migrations leave it, dumped by pg_dump 15
-- (--schema-only --no-owner --schema=outbox). Generated: do not edit; change a
-- migration, then run OUTBOXD_UPDATE_SCHEMA=1 cargo test --test integration schema_sql.
-- The explanations are the COMMENT ON statements and the comments inside bodies.
--
-- PostgreSQL database dump
--



SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: outbox; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA outbox;


--
-- Name: accept_message(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.accept_message() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION accept_message(); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.accept_message() IS 'Insert-time checks of a message that names an endpoint (it exists and is of the same tenant) or an ordering key (takes the key lock, space 0x6F627802, so keyed messages are routed in commit order).';


--
-- Name: adopt(regclass, jsonb); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adopt(source regclass, mapping jsonb DEFAULT '{}'::jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;


--
-- Name: adopt_backfill(regclass, timestamp with time zone, integer, timestamp with time zone, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adopt_backfill(source regclass, since timestamp with time zone, batch_size integer DEFAULT 1000, after_at timestamp with time zone DEFAULT NULL::timestamp with time zone, after_id text DEFAULT NULL::text) RETURNS TABLE(scanned integer, inserted integer, last_at timestamp with time zone, last_id text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    adoption outbox.adoptions%ROWTYPE;
    ts text;
    id text;
BEGIN
    SELECT * INTO adoption FROM outbox.adoptions a WHERE a.source = adopt_backfill.source;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox.adopt_backfill: % is not adopted', source
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Adopt it first: SELECT outbox.adopt(...).';
    END IF;
    ts := adoption.mapping ->> 'timestamp';
    IF ts IS NULL THEN
        RAISE EXCEPTION 'outbox.adopt_backfill: the mapping of % has no "timestamp" column', source
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Adopt it again naming the column that says when a row was written, e.g. {"timestamp": "created_at"}.';
    END IF;
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'outbox.adopt_backfill: batch_size must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    id := adoption.mapping ->> 'event_id';
    RETURN QUERY EXECUTE format($q$
        WITH batch AS MATERIALIZED (
            SELECT n.*,
                   n.%1$I::timestamptz AS outboxd_backfill_at,
                   n.%2$I::text COLLATE "C" AS outboxd_backfill_id
            FROM %3$s n
            WHERE n.%1$I >= $1
              AND n.%1$I < $5
              AND ($3::timestamptz IS NULL
                   OR (n.%1$I::timestamptz, n.%2$I::text COLLATE "C") > ($3, $4::text COLLATE "C"))
            ORDER BY outboxd_backfill_at, outboxd_backfill_id
            LIMIT $2
        ), inserted AS (
            INSERT INTO outbox.messages
                (event_id, event_type, payload, ordering_key, endpoint_id, deliver_after)
            SELECT %4$s
            FROM batch n
            ORDER BY n.outboxd_backfill_at, n.outboxd_backfill_id
            ON CONFLICT (event_id) DO NOTHING
            RETURNING 1
        ), last AS (
            SELECT b.outboxd_backfill_at, b.outboxd_backfill_id
            FROM batch b
            ORDER BY b.outboxd_backfill_at DESC, b.outboxd_backfill_id DESC
            LIMIT 1
        )
        SELECT (SELECT count(*)::integer FROM batch),
               (SELECT count(*)::integer FROM inserted),
               (SELECT l.outboxd_backfill_at FROM last l),
               (SELECT l.outboxd_backfill_id::text FROM last l)
        $q$, ts, id, source, outbox.adoption_select_list(source, adoption.mapping))
    USING since, batch_size, after_at, after_id, adoption.adopted_at;
END
$_$;


--
-- Name: adoption_column_type(regclass, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adoption_column_type(source regclass, col text) RETURNS regtype
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    typ oid;
    base oid;
BEGIN
    SELECT a.atttypid INTO typ
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = adoption_column_type.source
      AND a.attname = adoption_column_type.col
      AND a.attnum > 0
      AND NOT a.attisdropped;
    LOOP
        SELECT t.typbasetype INTO base FROM pg_catalog.pg_type t WHERE t.oid = typ AND t.typtype = 'd';
        EXIT WHEN NOT FOUND;
        typ := base;
    END LOOP;
    RETURN typ::regtype;
END
$$;


--
-- Name: adoption_json(text, text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adoption_json(value text, source text, col text) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE STRICT
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    detail text;
BEGIN
    RETURN value::jsonb;
EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RAISE EXCEPTION 'adopted table %: column "%" is not valid JSON (%)', source, col, SQLERRM
        USING ERRCODE = SQLSTATE,
              DETAIL = detail,
              HINT = 'outboxd sends the payload as the webhook body, so it must be JSON.';
END
$$;


--
-- Name: adoption_mapping(regclass, jsonb); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adoption_mapping(source regclass, mapping jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    known constant text[] := ARRAY['event_id', 'event_type', 'payload', 'ordering_key',
                                   'endpoint_id', 'deliver_after', 'timestamp'];
    required constant text[] := ARRAY['event_id', 'event_type', 'payload'];
    effective jsonb;
    bad text;
    key text;
    col text;
    typ regtype;
BEGIN
    IF mapping IS NULL OR jsonb_typeof(mapping) <> 'object' THEN
        RAISE EXCEPTION 'outbox.adopt: the mapping must be a JSON object, not %', coalesce(mapping::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'e.g. {"event_type": "kind", "payload": "body"}; {} adopts Debezium''s column names.';
    END IF;
    SELECT k INTO bad FROM jsonb_object_keys(mapping) k WHERE k <> ALL (known) ORDER BY k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'outbox.adopt: unknown mapping key "%"', bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The keys are ' || array_to_string(known, ', ') || '.';
    END IF;
    SELECT e.k INTO bad FROM jsonb_each(mapping) e(k, v)
    WHERE jsonb_typeof(e.v) <> 'string' AND NOT (jsonb_typeof(e.v) = 'null' AND e.k <> ALL (required))
    ORDER BY e.k LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'outbox.adopt: mapping key "%" must name a column of %, not %', bad, source, mapping -> bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Only the optional keys may be null (turned off); event_id, event_type and payload are required.';
    END IF;

    effective := '{"event_id": "id", "event_type": "type", "payload": "payload"}'::jsonb || mapping;
    IF NOT mapping ? 'ordering_key' AND outbox.adoption_column_type(source, 'aggregateid') IS NOT NULL THEN
        effective := effective || '{"ordering_key": "aggregateid"}';
    END IF;
    effective := jsonb_strip_nulls(effective);

    FOREACH key IN ARRAY known LOOP
        col := effective ->> key;
        CONTINUE WHEN col IS NULL;
        typ := outbox.adoption_column_type(source, col);
        IF typ IS NULL THEN
            RAISE EXCEPTION 'outbox.adopt: % has no column "%" (mapping key "%")', source, col, key
                USING ERRCODE = 'undefined_column',
                      HINT = format('Name the column that holds the %s, e.g. outbox.adopt(%L, ''{"%s": "<column>"}'').',
                                    key, source::text, key);
        END IF;
        IF key = 'payload' AND typ NOT IN ('jsonb'::regtype, 'json'::regtype)
           AND (SELECT t.typcategory FROM pg_catalog.pg_type t WHERE t.oid = typ) <> 'S' THEN
            RAISE EXCEPTION 'outbox.adopt: payload column "%" of % is %; it must be jsonb, json or text', col, source, typ
                USING ERRCODE = 'datatype_mismatch';
        END IF;
        IF key IN ('deliver_after', 'timestamp')
           AND typ NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
            RAISE EXCEPTION 'outbox.adopt: % column "%" of % is %; it must be timestamptz, timestamp or date', key, col, source, typ
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END LOOP;
    RETURN effective;
END
$$;


--
-- Name: adoption_null(text, text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adoption_null(source text, col text, target text) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RAISE EXCEPTION 'adopted table %: column "%" is NULL, but outbox.messages.% needs a value', source, col, target
        USING ERRCODE = 'not_null_violation';
END
$$;


--
-- Name: adoption_select_list(regclass, jsonb); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.adoption_select_list(source regclass, mapping jsonb) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    qualified text := (SELECT format('%I.%I', n.nspname, c.relname)
                  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = adoption_select_list.source);
    payload_col text := mapping ->> 'payload';
    payload_type regtype := outbox.adoption_column_type(source, payload_col);
    payload text;
BEGIN
    payload := CASE WHEN payload_type IN ('jsonb'::regtype, 'json'::regtype)
                    THEN format('n.%I::jsonb', payload_col)
                    ELSE format('outbox.adoption_json(n.%I::text, %L, %L)', payload_col, qualified, payload_col)
               END;
    RETURN format(concat_ws(E',\n                   ',
            'CASE WHEN n.%1$I IS NULL THEN outbox.adoption_null(%4$L, %1$L, ''event_id'') ELSE n.%1$I::text END',
            'CASE WHEN n.%2$I IS NULL THEN outbox.adoption_null(%4$L, %2$L, ''event_type'') ELSE n.%2$I::text END',
            'CASE WHEN n.%3$I IS NULL THEN outbox.adoption_null(%4$L, %3$L, ''payload'')::jsonb ELSE %5$s END',
            '%6$s', '%7$s', '%8$s'),
        mapping ->> 'event_id', mapping ->> 'event_type', payload_col, qualified, payload,
        CASE WHEN mapping ? 'ordering_key' THEN format('n.%I::text', mapping ->> 'ordering_key') ELSE 'NULL' END,
        CASE WHEN mapping ? 'endpoint_id' THEN format('n.%I::text', mapping ->> 'endpoint_id') ELSE 'NULL' END,
        CASE WHEN mapping ? 'deliver_after' THEN format('n.%I::timestamptz', mapping ->> 'deliver_after') ELSE 'NULL' END);
END
$_$;


--
-- Name: apply_payload_cap(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.apply_payload_cap() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    EXECUTE format('ALTER TABLE outbox.messages
                        DROP CONSTRAINT payload_within_max_payload_bytes,
                        ADD CONSTRAINT payload_within_max_payload_bytes
                            CHECK (octet_length(payload::text) <= %s) NOT VALID',
                   NEW.max_payload_bytes);
    RETURN NULL;
END
$$;


--
-- Name: cancel(bigint); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.cancel(delivery_id bigint) RETURNS boolean
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: check_endpoint(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.check_endpoint() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;


--
-- Name: FUNCTION check_endpoint(); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.check_endpoint() IS 'Insert- and update-time rules for endpoints (URL, secrets, headers, limits), checked before the constraints so that no error message shows the row.';


--
-- Name: check_endpoint_tenant(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.check_endpoint_tenant() RETURNS trigger
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


--
-- Name: check_retry_schedule(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.check_retry_schedule() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: claim(text, bigint, double precision, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.claim(owner text, max_rows bigint, lease_secs double precision, after_endpoint text) RETURNS TABLE(id bigint, attempts integer, schedule_attempt integer, endpoint_id text, ordering_key text, event_id text, event_type text, payload text, url text, secrets text[], timeout_ms integer, headers text, age_secs double precision, ca_pem text, client_cert_pem text, client_key_pem text, leased_until timestamp with time zone)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
$$;


--
-- Name: FUNCTION claim(owner text, max_rows bigint, lease_secs double precision, after_endpoint text); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.claim(owner text, max_rows bigint, lease_secs double precision, after_endpoint text) IS 'Claims up to max_rows due deliveries for owner, leased for lease_secs, and returns everything needed to send them. Walks the endpoints that have open deliveries from after after_endpoint (wrapping around), one index descent each, so its cost follows the batch, not the fleet; each endpoint is claimed under its lock (space 0x6F627803) and within max_in_flight; the batch is shared fairly by tenant, then by endpoint. Commits before any HTTP call.';


--
-- Name: delete_attempts(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.delete_attempts() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    DELETE FROM outbox.attempts a USING gone g WHERE a.delivery_id = g.id;
    RETURN NULL;
END
$$;


--
-- Name: delete_deliveries(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.delete_deliveries() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    DELETE FROM outbox.deliveries d USING gone g WHERE d.message_id = g.id;
    RETURN NULL;
END
$$;


--
-- Name: drop_stale_adoptions(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.drop_stale_adoptions() RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    stale record;
    dropped integer := 0;
BEGIN
    FOR stale IN
        DELETE FROM outbox.adoptions a
        WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                          WHERE t.tgrelid = a.source AND t.tgname = a.trigger_name)
          AND coalesce((SELECT pg_has_role(p.proowner, 'MEMBER') FROM pg_catalog.pg_proc p
                        WHERE p.oid = to_regprocedure(format('outbox.%I()', a.function_name))), true)
        RETURNING a.function_name
    LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS outbox.%I()', stale.function_name);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;


--
-- Name: keep_endpoints_with_deliveries(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.keep_endpoints_with_deliveries() RETURNS trigger
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


--
-- Name: lock_message_key(text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.lock_message_key(tenant_id text, ordering_key text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1868724226, outbox.message_lock_key(tenant_id, ordering_key));
END
$$;


--
-- Name: lock_ordering_key(text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.lock_ordering_key(endpoint_id text, ordering_key text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1868724225, outbox.ordering_lock_key(endpoint_id, ordering_key));
END
$$;


--
-- Name: message_lock_key(text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.message_lock_key(tenant_id text, ordering_key text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT hashtext(coalesce(tenant_id, '') || chr(31) || ordering_key)
$$;


--
-- Name: notify_sidecar(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.notify_sidecar() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox.waiting) THEN
        PERFORM pg_notify('outboxd_wakeup', '');
    END IF;
    RETURN NULL;
END
$$;


--
-- Name: on_delivery_finished(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.on_delivery_finished() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: on_endpoint_disabling(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.on_endpoint_disabling() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    NEW.disabled_at := CASE WHEN NEW.enabled THEN NULL ELSE now() END;
    RETURN NEW;
END
$$;


--
-- Name: on_endpoint_enabling(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.on_endpoint_enabling() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    NEW.failure_streak := 0;
    NEW.failing_since := NULL;
    NEW.disabled_reason := NULL;
    RETURN NEW;
END
$$;


--
-- Name: on_endpoint_toggled(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.on_endpoint_toggled() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    PERFORM outbox.record_event(
        CASE WHEN NEW.enabled THEN 'endpoint.enabled' ELSE 'endpoint.disabled' END,
        NEW.id, NULL,
        jsonb_build_object('reason', NEW.disabled_reason));
    RETURN NULL;
END
$$;


--
-- Name: ordering_lock_key(text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.ordering_lock_key(endpoint_id text, ordering_key text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT hashtext(endpoint_id || chr(31) || ordering_key)
$$;


--
-- Name: promote_next_in_key(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.promote_next_in_key() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION promote_next_in_key(); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.promote_next_in_key() IS 'When a keyed delivery finishes, makes the next delivery of its (endpoint, ordering key) due, under the key lock (space 0x6F627801).';


--
-- Name: purge_messages(bigint, double precision, bigint); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.purge_messages(after_id bigint, older_than_secs double precision, page_size bigint) RETURNS TABLE(last_id bigint, deleted bigint, reached_recent boolean)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION purge_messages(after_id bigint, older_than_secs double precision, page_size bigint); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.purge_messages(after_id bigint, older_than_secs double precision, page_size bigint) IS 'Deletes one keyset page of routed messages older than the retention whose deliveries are all gone (SECURITY DEFINER: the sidecar role has no DELETE on messages).';


--
-- Name: record_event(text, text, bigint, jsonb); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.record_event(kind text, endpoint_id text, delivery_id bigint, detail jsonb) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO outbox.events (kind, endpoint_id, delivery_id, detail)
    VALUES (kind, endpoint_id, delivery_id, coalesce(detail, '{}'))
    RETURNING id INTO new_id;
    PERFORM pg_notify('outbox_events', json_build_object('id', new_id, 'kind', kind)::text);
END
$$;


--
-- Name: recover(text, timestamp with time zone, timestamp with time zone, text[], text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone DEFAULT NULL::timestamp with time zone, event_types text[] DEFAULT NULL::text[], triggered_by text DEFAULT NULL::text) RETURNS integer
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


--
-- Name: FUNCTION recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone, event_types text[], triggered_by text); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone, event_types text[], triggered_by text) IS 'Gives an endpoint the messages of its tenant and event types it has no delivery for, created in a time range (older than the endpoint included); returns how many. Recorded in outbox.events.';


--
-- Name: replay(bigint); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.replay(delivery_id bigint) RETURNS boolean
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION replay(delivery_id bigint); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.replay(delivery_id bigint) IS 'Makes one dead delivery pending again with a fresh retry schedule; returns whether it was dead. Recorded in outbox.events, with who asked when given.';


--
-- Name: replay(bigint, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.replay(delivery_id bigint, triggered_by text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION replay(delivery_id bigint, triggered_by text); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.replay(delivery_id bigint, triggered_by text) IS 'Makes one dead delivery pending again with a fresh retry schedule; returns whether it was dead. Recorded in outbox.events, with who asked when given.';


--
-- Name: replay_dead(text, timestamp with time zone); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.replay_dead(endpoint_id text, since timestamp with time zone) RETURNS integer
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION replay_dead(endpoint_id text, since timestamp with time zone); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.replay_dead(endpoint_id text, since timestamp with time zone) IS 'Makes every dead delivery of an endpoint that died since a time pending again; returns how many. Recorded in outbox.events.';


--
-- Name: replay_dead(text, timestamp with time zone, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.replay_dead(endpoint_id text, since timestamp with time zone, triggered_by text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION replay_dead(endpoint_id text, since timestamp with time zone, triggered_by text); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.replay_dead(endpoint_id text, since timestamp with time zone, triggered_by text) IS 'Makes every dead delivery of an endpoint that died since a time pending again; returns how many. Recorded in outbox.events.';


--
-- Name: resend(bigint, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.resend(delivery_id bigint, triggered_by text DEFAULT NULL::text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION resend(delivery_id bigint, triggered_by text); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.resend(delivery_id bigint, triggered_by text) IS 'Sends a delivered, dead or cancelled delivery again (same webhook-id, attempts continue); returns whether it did. Recorded in outbox.events with who asked.';


--
-- Name: route(integer); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.route(max_messages integer) RETURNS integer
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
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


--
-- Name: FUNCTION route(max_messages integer); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.route(max_messages integer) IS 'Routes up to max committed, unrouted messages into their deliveries (oldest and newest unkeyed ones, scheduled ones that are due, and keyed ones in key order under their key lock), marks them routed, and returns how many. Any number of sidecars may run it at once: rows being routed elsewhere are skipped.';


--
-- Name: route_targets(bigint[]); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.route_targets(ids bigint[]) RETURNS TABLE(message_id bigint, endpoint_id text, tenant_id text, ordering_key text, due_at timestamp with time zone, refusal text, block_on_dead boolean)
    LANGUAGE plpgsql STABLE
    SET enable_seqscan TO 'off'
    SET jit TO 'off'
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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


--
-- Name: FUNCTION route_targets(ids bigint[]); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.route_targets(ids bigint[]) IS 'For each message id, the endpoints it goes to: its endpoint_id, or every enabled endpoint of its tenant subscribed to its event type (enabled when the message was written).';


--
-- Name: secret_is_valid(text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.secret_is_valid(secret text) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
    SELECT CASE
        WHEN secret ~ '^whsec_([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'
            THEN length(decode(substr(secret, 7), 'base64')) BETWEEN 24 AND 64
        WHEN secret ~ '^whsk_([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'
            THEN length(decode(substr(secret, 6), 'base64')) IN (32, 64)
        ELSE false
    END
$_$;


--
-- Name: set_notify(boolean); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.set_notify(enabled boolean) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF enabled THEN
        ALTER TABLE outbox.messages ENABLE TRIGGER messages_notify;
    ELSE
        ALTER TABLE outbox.messages DISABLE TRIGGER messages_notify;
    END IF;
    RETURN enabled;
END
$$;


--
-- Name: set_retry_schedule(text, interval[], text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text DEFAULT NULL::text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text) IS 'Sets (or, with NULL, removes) an endpoint''s own retry schedule, used instead of the sidecar''s. Recorded in outbox.events.';


--
-- Name: shown(text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.shown(value text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT CASE WHEN length(value) > 64
                THEN left(regexp_replace(value, '[[:cntrl:]]', '?', 'g'), 64) || '...'
                ELSE regexp_replace(value, '[[:cntrl:]]', '?', 'g')
           END
$$;


--
-- Name: sync_subscriptions(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.sync_subscriptions() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: tenant_scope(); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.tenant_scope() RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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


--
-- Name: FUNCTION tenant_scope(); Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON FUNCTION outbox.tenant_scope() IS 'The tenant an outbox_tenant_reader session may read (the outbox.tenant_id setting); a value matching no tenant when unset, so it reads nothing.';


--
-- Name: triggered(text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.triggered(triggered_by text) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT jsonb_build_object('triggered_by', coalesce(outbox.shown(triggered_by), 'sql'),
                              'role', session_user::text)
$$;


--
-- Name: try_lock_message_key(text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.try_lock_message_key(tenant_id text, ordering_key text) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN pg_try_advisory_xact_lock(1868724226, outbox.message_lock_key(tenant_id, ordering_key));
END
$$;


--
-- Name: try_lock_ordering_key(text, text); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.try_lock_ordering_key(endpoint_id text, ordering_key text) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN pg_try_advisory_xact_lock(1868724225, outbox.ordering_lock_key(endpoint_id, ordering_key));
END
$$;


--
-- Name: unadopt(regclass); Type: FUNCTION; Schema: outbox; Owner: -
--

CREATE FUNCTION outbox.unadopt(source regclass) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    previous outbox.adoptions%ROWTYPE;
BEGIN
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', source);
    DELETE FROM outbox.adoptions a WHERE a.source = unadopt.source RETURNING * INTO previous;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', previous.trigger_name, source);
    EXECUTE format('DROP FUNCTION IF EXISTS outbox.%I()', previous.function_name);
    PERFORM outbox.drop_stale_adoptions();
    RETURN true;
END
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: adoptions; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.adoptions (
    source regclass NOT NULL,
    mapping jsonb NOT NULL,
    function_name name NOT NULL,
    trigger_name name NOT NULL,
    adopted_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: attempts; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.attempts (
    delivery_id bigint NOT NULL,
    attempt integer NOT NULL,
    started_at timestamp with time zone NOT NULL,
    duration_ms integer NOT NULL,
    status_code integer,
    error text,
    response_excerpt text,
    worker_id text,
    tenant_id text
);


--
-- Name: TABLE attempts; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.attempts IS 'One row per HTTP attempt: status code, error, duration, the start of the answer, and which worker made it.';


--
-- Name: deliveries; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.deliveries (
    id bigint NOT NULL,
    message_id bigint NOT NULL,
    endpoint_id text NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone,
    lease_owner text,
    lease_expires_at timestamp with time zone GENERATED ALWAYS AS (
CASE
    WHEN (status = 'in_flight'::text) THEN next_attempt_at
    ELSE NULL::timestamp with time zone
END) STORED,
    last_status_code integer,
    last_error text,
    delivered_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    replay_base integer DEFAULT 0 NOT NULL,
    replayed_at timestamp with time zone,
    ordering_key text,
    tenant_id text,
    CONSTRAINT delivery_due_while_open CHECK (((status = ANY (ARRAY['pending'::text, 'in_flight'::text])) = (next_attempt_at IS NOT NULL))),
    CONSTRAINT delivery_status_known CHECK ((status = ANY (ARRAY['pending'::text, 'in_flight'::text, 'delivered'::text, 'dead'::text, 'cancelled'::text])))
)
WITH (autovacuum_vacuum_scale_factor='0.02', autovacuum_analyze_scale_factor='0.02');


--
-- Name: TABLE deliveries; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.deliveries IS 'One message to one endpoint: status pending, in_flight, delivered, dead or cancelled. A claim sets status in_flight, lease_owner and next_attempt_at (the lease expiry); every outcome is written only under the same claim (owner, attempt, lease expiry).';


--
-- Name: deliveries_id_seq; Type: SEQUENCE; Schema: outbox; Owner: -
--

ALTER TABLE outbox.deliveries ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME outbox.deliveries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: endpoints; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.endpoints (
    id text NOT NULL,
    url text NOT NULL,
    secrets text[] NOT NULL,
    event_types text[],
    enabled boolean DEFAULT true NOT NULL,
    disabled_reason text,
    timeout_ms integer,
    max_in_flight integer DEFAULT 16 NOT NULL,
    rate_limit double precision,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_success_at timestamp with time zone,
    failure_streak integer DEFAULT 0 NOT NULL,
    failing_since timestamp with time zone,
    ca_pem text,
    client_cert_pem text,
    client_key_pem text,
    block_on_dead boolean DEFAULT false NOT NULL,
    rate_tokens double precision,
    rate_updated_at timestamp with time zone,
    tenant_id text,
    disabled_at timestamp with time zone,
    retry_schedule interval[],
    CONSTRAINT endpoint_client_identity_pair CHECK (((client_cert_pem IS NULL) = (client_key_pem IS NULL))),
    CONSTRAINT endpoint_has_secret CHECK ((cardinality(secrets) >= 1)),
    CONSTRAINT endpoint_headers_object CHECK ((jsonb_typeof(headers) = 'object'::text)),
    CONSTRAINT endpoint_id_format CHECK ((id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'::text)),
    CONSTRAINT endpoint_max_in_flight_positive CHECK ((max_in_flight > 0)),
    CONSTRAINT endpoint_rate_limit_positive CHECK ((rate_limit > (0)::double precision)),
    CONSTRAINT endpoint_timeout_positive CHECK ((timeout_ms > 0)),
    CONSTRAINT endpoint_url_scheme CHECK ((url ~* '^https?://[^/?#[:space:]]+'::text))
);


--
-- Name: TABLE endpoints; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.endpoints IS 'Webhook receivers: URL, signing secrets, subscriptions (event_types, tenant_id), limits, health (last success, failure streak) and whether enabled. Checked by outbox.check_endpoint; outbox.subscriptions is kept from it.';


--
-- Name: endpoint_health; Type: VIEW; Schema: outbox; Owner: -
--

CREATE VIEW outbox.endpoint_health AS
 SELECT e.id AS endpoint_id,
    e.enabled,
    e.disabled_reason,
    COALESCE(s.pending, (0)::bigint) AS pending,
    COALESCE(s.in_flight, (0)::bigint) AS in_flight,
    COALESCE(s.dead, (0)::bigint) AS dead,
    (now() - s.oldest_pending) AS oldest_pending_age,
    e.last_success_at,
    e.failure_streak,
    e.failing_since,
    e.tenant_id
   FROM (outbox.endpoints e
     LEFT JOIN LATERAL ( SELECT count(*) FILTER (WHERE (d.status = 'pending'::text)) AS pending,
            count(*) FILTER (WHERE (d.status = 'in_flight'::text)) AS in_flight,
            count(*) FILTER (WHERE (d.status = 'dead'::text)) AS dead,
            min(d.created_at) FILTER (WHERE (d.status = 'pending'::text)) AS oldest_pending
           FROM outbox.deliveries d
          WHERE ((d.endpoint_id = e.id) AND (d.status = ANY (ARRAY['pending'::text, 'in_flight'::text, 'dead'::text])))) s ON (true))
  WHERE ((( SELECT outbox.tenant_scope() AS tenant_scope) IS NULL) OR (e.tenant_id = ( SELECT outbox.tenant_scope() AS tenant_scope)));


--
-- Name: VIEW endpoint_health; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON VIEW outbox.endpoint_health IS 'Per endpoint: enabled, pending, dead, last success, failure streak, why disabled. No secret or header value.';


--
-- Name: events; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.events (
    id bigint NOT NULL,
    occurred_at timestamp with time zone DEFAULT now() NOT NULL,
    kind text NOT NULL,
    endpoint_id text,
    delivery_id bigint,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT event_kind_known CHECK ((kind = ANY (ARRAY['endpoint.disabled'::text, 'endpoint.enabled'::text, 'delivery.dead'::text, 'delivery.replay_succeeded'::text, 'delivery.replayed'::text, 'delivery.resent'::text, 'endpoint.dead_replayed'::text, 'endpoint.recovered'::text, 'endpoint.retry_schedule_set'::text])))
);


--
-- Name: TABLE events; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.events IS 'What operators and the sidecar did to endpoints and deliveries (replays, disables, enables, secret rotations), for audit.';


--
-- Name: events_id_seq; Type: SEQUENCE; Schema: outbox; Owner: -
--

ALTER TABLE outbox.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME outbox.events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: messages; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.messages (
    id bigint NOT NULL,
    event_id text DEFAULT (gen_random_uuid())::text NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    endpoint_id text,
    ordering_key text,
    deliver_after timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    tenant_id text,
    routed boolean DEFAULT false NOT NULL,
    CONSTRAINT message_event_id_not_empty CHECK ((event_id <> ''::text))
);


--
-- Name: TABLE messages; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.messages IS 'What producers INSERT, in the transaction that changes their business data. A message fans out to a delivery per matching endpoint when it is routed (outbox.route), or goes to its endpoint_id alone. Checked at insert by CHECK constraints and, when it names an endpoint or an ordering key, by outbox.accept_message.';


--
-- Name: message_status; Type: VIEW; Schema: outbox; Owner: -
--

CREATE VIEW outbox.message_status AS
 SELECT d.id AS delivery_id,
    m.id AS message_id,
    m.event_id,
    m.event_type,
    d.endpoint_id,
    d.status,
    d.attempts,
    d.last_status_code,
    d.last_error,
        CASE
            WHEN ((d.status = 'pending'::text) AND (d.next_attempt_at <> 'infinity'::timestamp with time zone)) THEN d.next_attempt_at
            ELSE NULL::timestamp with time zone
        END AS next_attempt_at,
    d.delivered_at,
    m.ordering_key,
    m.created_at,
    d.updated_at,
    m.tenant_id,
        CASE
            WHEN ((d.status = 'pending'::text) AND (NOT e.enabled)) THEN format('endpoint %s is disabled: %s'::text, e.id, COALESCE(e.disabled_reason, 'no reason recorded'::text))
            ELSE NULL::text
        END AS waiting_reason
   FROM ((outbox.deliveries d
     JOIN outbox.messages m ON ((m.id = d.message_id)))
     JOIN outbox.endpoints e ON ((e.id = d.endpoint_id)))
  WHERE ((( SELECT outbox.tenant_scope() AS tenant_scope) IS NULL) OR (m.tenant_id = ( SELECT outbox.tenant_scope() AS tenant_scope)))
UNION ALL
 SELECT NULL::bigint AS delivery_id,
    m.id AS message_id,
    m.event_id,
    m.event_type,
    m.endpoint_id,
    'pending'::text AS status,
    0 AS attempts,
    NULL::integer AS last_status_code,
    NULL::text AS last_error,
    COALESCE(m.deliver_after, m.created_at) AS next_attempt_at,
    NULL::timestamp with time zone AS delivered_at,
    m.ordering_key,
    m.created_at,
    m.created_at AS updated_at,
    m.tenant_id,
    NULL::text AS waiting_reason
   FROM outbox.messages m
  WHERE ((NOT m.routed) AND ((( SELECT outbox.tenant_scope() AS tenant_scope) IS NULL) OR (m.tenant_id = ( SELECT outbox.tenant_scope() AS tenant_scope))));


--
-- Name: VIEW message_status; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON VIEW outbox.message_status IS 'One row per message and target endpoint with the delivery state, attempts and last error: what applications query for delivery status. Unrouted messages show as pending. waiting_reason says why a pending delivery is not being sent (its endpoint is disabled, and why); NULL otherwise.';


--
-- Name: messages_id_seq; Type: SEQUENCE; Schema: outbox; Owner: -
--

ALTER TABLE outbox.messages ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME outbox.messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);


--
-- Name: schema_migrations; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: settings; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.settings (
    singleton boolean DEFAULT true NOT NULL,
    max_payload_bytes integer DEFAULT 262144 NOT NULL,
    CONSTRAINT settings_max_payload_positive CHECK ((max_payload_bytes > 0)),
    CONSTRAINT settings_single_row CHECK (singleton)
);


--
-- Name: TABLE settings; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.settings IS 'One row of database-wide settings (max_payload_bytes, notify).';


--
-- Name: subscriptions; Type: TABLE; Schema: outbox; Owner: -
--

CREATE TABLE outbox.subscriptions (
    tenant_key text NOT NULL,
    event_type text NOT NULL,
    endpoint_id text NOT NULL
);


--
-- Name: TABLE subscriptions; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.subscriptions IS 'Derived from outbox.endpoints by outbox.sync_subscriptions: one row per (tenant, event type, enabled endpoint), so routing finds subscribers with an index probe. Never written by hand.';


--
-- Name: waiting; Type: TABLE; Schema: outbox; Owner: -
--

CREATE UNLOGGED TABLE outbox.waiting (
    worker_id text NOT NULL,
    since timestamp with time zone DEFAULT now() NOT NULL,
    stale_after timestamp with time zone DEFAULT 'infinity'::timestamp with time zone NOT NULL
);


--
-- Name: TABLE waiting; Type: COMMENT; Schema: outbox; Owner: -
--

COMMENT ON TABLE outbox.waiting IS 'Sidecars in notify mode waiting for NOTIFY: a row from when a sidecar has found no work for 10 ms until one of its claims finds some. The insert trigger notifies only while a row exists; a sidecar looks again at once, 5 ms and 50 ms after entering, for producers that checked just before. A row not refreshed by stale_after was left by a crashed sidecar and is removed by the others.';


--
-- Name: adoptions adoptions_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.adoptions
    ADD CONSTRAINT adoptions_pkey PRIMARY KEY (source);


--
-- Name: attempts attempts_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.attempts
    ADD CONSTRAINT attempts_pkey PRIMARY KEY (delivery_id, attempt);


--
-- Name: deliveries deliveries_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.deliveries
    ADD CONSTRAINT deliveries_pkey PRIMARY KEY (id);


--
-- Name: deliveries delivery_once_per_endpoint; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.deliveries
    ADD CONSTRAINT delivery_once_per_endpoint UNIQUE (message_id, endpoint_id);


--
-- Name: endpoints endpoints_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.endpoints
    ADD CONSTRAINT endpoints_pkey PRIMARY KEY (id);


--
-- Name: messages event_id_max_256_bytes_no_control_characters; Type: CHECK CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE outbox.messages
    ADD CONSTRAINT event_id_max_256_bytes_no_control_characters CHECK (((octet_length(event_id) <= 256) AND (event_id !~ '[[:cntrl:]]'::text))) NOT VALID;


--
-- Name: messages event_type_not_blank_max_256_bytes_no_control_chars; Type: CHECK CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE outbox.messages
    ADD CONSTRAINT event_type_not_blank_max_256_bytes_no_control_chars CHECK (((btrim(event_type) <> ''::text) AND (octet_length(event_type) <= 256) AND (event_type !~ '[[:cntrl:]]'::text))) NOT VALID;


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);


--
-- Name: messages messages_event_id_key; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.messages
    ADD CONSTRAINT messages_event_id_key UNIQUE (event_id);


--
-- Name: messages messages_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);


--
-- Name: messages ordering_key_max_256_bytes; Type: CHECK CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE outbox.messages
    ADD CONSTRAINT ordering_key_max_256_bytes CHECK ((octet_length(ordering_key) <= 256)) NOT VALID;


--
-- Name: messages payload_within_max_payload_bytes; Type: CHECK CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE outbox.messages
    ADD CONSTRAINT payload_within_max_payload_bytes CHECK ((octet_length((payload)::text) <= 262144)) NOT VALID;


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: settings settings_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (singleton);


--
-- Name: subscriptions subscriptions_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.subscriptions
    ADD CONSTRAINT subscriptions_pkey PRIMARY KEY (tenant_key, event_type, endpoint_id);


--
-- Name: messages tenant_id_not_blank_max_256_bytes_no_control_chars; Type: CHECK CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE outbox.messages
    ADD CONSTRAINT tenant_id_not_blank_max_256_bytes_no_control_chars CHECK (((btrim(tenant_id) <> ''::text) AND (octet_length(tenant_id) <= 256) AND (tenant_id !~ '[[:cntrl:]]'::text))) NOT VALID;


--
-- Name: waiting waiting_pkey; Type: CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.waiting
    ADD CONSTRAINT waiting_pkey PRIMARY KEY (worker_id);


--
-- Name: deliveries_due; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX deliveries_due ON outbox.deliveries USING btree (endpoint_id, next_attempt_at, id) WHERE (status = ANY (ARRAY['pending'::text, 'in_flight'::text]));


--
-- Name: deliveries_endpoint_status; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX deliveries_endpoint_status ON outbox.deliveries USING btree (endpoint_id, status) WHERE (status = ANY (ARRAY['in_flight'::text, 'dead'::text]));


--
-- Name: deliveries_ordering; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX deliveries_ordering ON outbox.deliveries USING btree (endpoint_id, ordering_key, message_id) WHERE ((ordering_key IS NOT NULL) AND (status = ANY (ARRAY['pending'::text, 'in_flight'::text, 'dead'::text])));


--
-- Name: events_occurred_at; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX events_occurred_at ON outbox.events USING btree (occurred_at);


--
-- Name: messages_created_at_brin; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX messages_created_at_brin ON outbox.messages USING brin (created_at);


--
-- Name: messages_scheduled; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX messages_scheduled ON outbox.messages USING btree (deliver_after, id) WHERE ((NOT routed) AND (deliver_after IS NOT NULL) AND (ordering_key IS NULL));


--
-- Name: messages_to_route; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX messages_to_route ON outbox.messages USING btree (id) WHERE ((NOT routed) AND (deliver_after IS NULL) AND (ordering_key IS NULL));


--
-- Name: messages_to_route_keyed; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX messages_to_route_keyed ON outbox.messages USING btree (id) WHERE ((NOT routed) AND (ordering_key IS NOT NULL));


--
-- Name: subscriptions_endpoint; Type: INDEX; Schema: outbox; Owner: -
--

CREATE INDEX subscriptions_endpoint ON outbox.subscriptions USING btree (endpoint_id);


--
-- Name: deliveries deliveries_delete_attempts; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER deliveries_delete_attempts AFTER DELETE ON outbox.deliveries REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION outbox.delete_attempts();


--
-- Name: deliveries deliveries_finished; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER deliveries_finished AFTER UPDATE OF status ON outbox.deliveries FOR EACH ROW WHEN (((old.status IS DISTINCT FROM new.status) AND ((new.status = 'dead'::text) OR ((new.status = 'delivered'::text) AND (new.replayed_at IS NOT NULL))))) EXECUTE FUNCTION outbox.on_delivery_finished();


--
-- Name: deliveries deliveries_promote_next_in_key; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER deliveries_promote_next_in_key AFTER UPDATE OF status ON outbox.deliveries FOR EACH ROW WHEN (((new.ordering_key IS NOT NULL) AND (old.status = ANY (ARRAY['pending'::text, 'in_flight'::text, 'dead'::text])) AND (new.status = ANY (ARRAY['delivered'::text, 'dead'::text, 'cancelled'::text])) AND (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION outbox.promote_next_in_key();


--
-- Name: endpoints endpoints_check; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_check BEFORE INSERT OR UPDATE OF id, url, secrets, event_types, timeout_ms, max_in_flight, rate_limit, headers, ca_pem, client_cert_pem, client_key_pem ON outbox.endpoints FOR EACH ROW EXECUTE FUNCTION outbox.check_endpoint();


--
-- Name: endpoints endpoints_check_retry_schedule; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_check_retry_schedule BEFORE INSERT OR UPDATE OF retry_schedule ON outbox.endpoints FOR EACH ROW EXECUTE FUNCTION outbox.check_retry_schedule();


--
-- Name: endpoints endpoints_check_tenant; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_check_tenant BEFORE INSERT OR UPDATE OF tenant_id ON outbox.endpoints FOR EACH ROW EXECUTE FUNCTION outbox.check_endpoint_tenant();


--
-- Name: endpoints endpoints_disabling; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_disabling BEFORE UPDATE OF enabled ON outbox.endpoints FOR EACH ROW WHEN ((old.enabled IS DISTINCT FROM new.enabled)) EXECUTE FUNCTION outbox.on_endpoint_disabling();


--
-- Name: endpoints endpoints_enabling; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_enabling BEFORE UPDATE OF enabled ON outbox.endpoints FOR EACH ROW WHEN ((new.enabled AND (NOT old.enabled))) EXECUTE FUNCTION outbox.on_endpoint_enabling();


--
-- Name: endpoints endpoints_keep_id_with_deliveries; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_keep_id_with_deliveries BEFORE UPDATE OF id ON outbox.endpoints FOR EACH ROW WHEN ((old.id IS DISTINCT FROM new.id)) EXECUTE FUNCTION outbox.keep_endpoints_with_deliveries();


--
-- Name: endpoints endpoints_keep_with_deliveries; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_keep_with_deliveries BEFORE DELETE ON outbox.endpoints FOR EACH ROW EXECUTE FUNCTION outbox.keep_endpoints_with_deliveries();


--
-- Name: endpoints endpoints_subscriptions; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_subscriptions AFTER INSERT OR UPDATE OF id, tenant_id, event_types ON outbox.endpoints FOR EACH ROW EXECUTE FUNCTION outbox.sync_subscriptions();


--
-- Name: endpoints endpoints_toggled; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER endpoints_toggled AFTER UPDATE OF enabled ON outbox.endpoints FOR EACH ROW WHEN ((old.enabled IS DISTINCT FROM new.enabled)) EXECUTE FUNCTION outbox.on_endpoint_toggled();


--
-- Name: messages messages_accept; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER messages_accept BEFORE INSERT ON outbox.messages FOR EACH ROW WHEN (((new.endpoint_id IS NOT NULL) OR (new.ordering_key IS NOT NULL))) EXECUTE FUNCTION outbox.accept_message();


--
-- Name: messages messages_delete_deliveries; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER messages_delete_deliveries AFTER DELETE ON outbox.messages REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION outbox.delete_deliveries();


--
-- Name: messages messages_notify; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER messages_notify AFTER INSERT ON outbox.messages FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_sidecar();


--
-- Name: settings settings_payload_cap; Type: TRIGGER; Schema: outbox; Owner: -
--

CREATE TRIGGER settings_payload_cap AFTER INSERT OR UPDATE OF max_payload_bytes ON outbox.settings FOR EACH ROW EXECUTE FUNCTION outbox.apply_payload_cap();


--
-- Name: subscriptions subscriptions_endpoint_id_fkey; Type: FK CONSTRAINT; Schema: outbox; Owner: -
--

ALTER TABLE ONLY outbox.subscriptions
    ADD CONSTRAINT subscriptions_endpoint_id_fkey FOREIGN KEY (endpoint_id) REFERENCES outbox.endpoints(id) ON UPDATE CASCADE ON DELETE CASCADE;


--
-- Name: attempts; Type: ROW SECURITY; Schema: outbox; Owner: -
--

ALTER TABLE outbox.attempts ENABLE ROW LEVEL SECURITY;

--
-- Name: attempts attempts_of_the_tenant; Type: POLICY; Schema: outbox; Owner: -
--

CREATE POLICY attempts_of_the_tenant ON outbox.attempts AS RESTRICTIVE FOR SELECT TO outbox_tenant_reader USING ((tenant_id = ( SELECT outbox.tenant_scope() AS tenant_scope)));


--
-- Name: attempts attempts_readers; Type: POLICY; Schema: outbox; Owner: -
--

CREATE POLICY attempts_readers ON outbox.attempts USING (true) WITH CHECK (true);


--
-- Name: SCHEMA outbox; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA outbox TO outbox_writer;
GRANT USAGE ON SCHEMA outbox TO outbox_sidecar;
GRANT USAGE ON SCHEMA outbox TO outbox_tenant_reader;


--
-- Name: FUNCTION accept_message(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.accept_message() FROM PUBLIC;


--
-- Name: FUNCTION apply_payload_cap(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.apply_payload_cap() FROM PUBLIC;


--
-- Name: FUNCTION check_endpoint(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.check_endpoint() FROM PUBLIC;


--
-- Name: FUNCTION check_endpoint_tenant(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.check_endpoint_tenant() FROM PUBLIC;


--
-- Name: FUNCTION check_retry_schedule(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.check_retry_schedule() FROM PUBLIC;


--
-- Name: FUNCTION delete_deliveries(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.delete_deliveries() FROM PUBLIC;


--
-- Name: FUNCTION keep_endpoints_with_deliveries(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.keep_endpoints_with_deliveries() FROM PUBLIC;


--
-- Name: FUNCTION purge_messages(after_id bigint, older_than_secs double precision, page_size bigint); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.purge_messages(after_id bigint, older_than_secs double precision, page_size bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION outbox.purge_messages(after_id bigint, older_than_secs double precision, page_size bigint) TO outbox_sidecar;


--
-- Name: FUNCTION recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone, event_types text[], triggered_by text); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone, event_types text[], triggered_by text) FROM PUBLIC;
GRANT ALL ON FUNCTION outbox.recover(endpoint_id text, since timestamp with time zone, until timestamp with time zone, event_types text[], triggered_by text) TO outbox_sidecar;


--
-- Name: FUNCTION replay(delivery_id bigint, triggered_by text); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.replay(delivery_id bigint, triggered_by text) FROM PUBLIC;
GRANT ALL ON FUNCTION outbox.replay(delivery_id bigint, triggered_by text) TO outbox_sidecar;


--
-- Name: FUNCTION replay_dead(endpoint_id text, since timestamp with time zone, triggered_by text); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.replay_dead(endpoint_id text, since timestamp with time zone, triggered_by text) FROM PUBLIC;
GRANT ALL ON FUNCTION outbox.replay_dead(endpoint_id text, since timestamp with time zone, triggered_by text) TO outbox_sidecar;


--
-- Name: FUNCTION resend(delivery_id bigint, triggered_by text); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.resend(delivery_id bigint, triggered_by text) FROM PUBLIC;
GRANT ALL ON FUNCTION outbox.resend(delivery_id bigint, triggered_by text) TO outbox_sidecar;


--
-- Name: FUNCTION set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text) FROM PUBLIC;
GRANT ALL ON FUNCTION outbox.set_retry_schedule(endpoint_id text, schedule interval[], triggered_by text) TO outbox_sidecar;


--
-- Name: FUNCTION sync_subscriptions(); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.sync_subscriptions() FROM PUBLIC;


--
-- Name: FUNCTION triggered(triggered_by text); Type: ACL; Schema: outbox; Owner: -
--

REVOKE ALL ON FUNCTION outbox.triggered(triggered_by text) FROM PUBLIC;


--
-- Name: TABLE attempts; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT,INSERT ON TABLE outbox.attempts TO outbox_sidecar;
GRANT SELECT ON TABLE outbox.attempts TO outbox_tenant_reader;


--
-- Name: COLUMN attempts.delivery_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(delivery_id) ON TABLE outbox.attempts TO outbox_sidecar;


--
-- Name: COLUMN attempts.attempt; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(attempt) ON TABLE outbox.attempts TO outbox_sidecar;


--
-- Name: TABLE deliveries; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT,DELETE ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.message_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(message_id) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.endpoint_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(endpoint_id) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.status; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(status),UPDATE(status) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.attempts; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(attempts) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.next_attempt_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(next_attempt_at),UPDATE(next_attempt_at) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.lease_owner; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(lease_owner) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.last_status_code; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(last_status_code) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.last_error; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(last_error),UPDATE(last_error) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.delivered_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(delivered_at) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.updated_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(updated_at) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.ordering_key; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(ordering_key) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: COLUMN deliveries.tenant_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(tenant_id) ON TABLE outbox.deliveries TO outbox_sidecar;


--
-- Name: TABLE endpoints; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.id; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(id) ON TABLE outbox.endpoints TO outbox_writer;


--
-- Name: COLUMN endpoints.event_types; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(event_types) ON TABLE outbox.endpoints TO outbox_writer;


--
-- Name: COLUMN endpoints.enabled; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(enabled) ON TABLE outbox.endpoints TO outbox_writer;
GRANT UPDATE(enabled) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.disabled_reason; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(disabled_reason) ON TABLE outbox.endpoints TO outbox_writer;
GRANT UPDATE(disabled_reason) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.updated_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(updated_at) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.last_success_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(last_success_at) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.failure_streak; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(failure_streak) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.failing_since; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(failing_since) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.rate_tokens; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(rate_tokens) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.rate_updated_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT UPDATE(rate_updated_at) ON TABLE outbox.endpoints TO outbox_sidecar;


--
-- Name: COLUMN endpoints.tenant_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(tenant_id) ON TABLE outbox.endpoints TO outbox_writer;


--
-- Name: TABLE endpoint_health; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.endpoint_health TO outbox_writer;
GRANT SELECT ON TABLE outbox.endpoint_health TO outbox_sidecar;
GRANT SELECT ON TABLE outbox.endpoint_health TO outbox_tenant_reader;


--
-- Name: TABLE events; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.events TO outbox_writer;
GRANT SELECT,INSERT,DELETE ON TABLE outbox.events TO outbox_sidecar;


--
-- Name: COLUMN messages.id; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(id) ON TABLE outbox.messages TO outbox_writer;
GRANT SELECT(id) ON TABLE outbox.messages TO outbox_sidecar;


--
-- Name: COLUMN messages.event_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(event_id),INSERT(event_id) ON TABLE outbox.messages TO outbox_writer;
GRANT SELECT(event_id) ON TABLE outbox.messages TO outbox_sidecar;


--
-- Name: COLUMN messages.event_type; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(event_type) ON TABLE outbox.messages TO outbox_sidecar;
GRANT INSERT(event_type) ON TABLE outbox.messages TO outbox_writer;


--
-- Name: COLUMN messages.payload; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(payload) ON TABLE outbox.messages TO outbox_sidecar;
GRANT INSERT(payload) ON TABLE outbox.messages TO outbox_writer;


--
-- Name: COLUMN messages.endpoint_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(endpoint_id) ON TABLE outbox.messages TO outbox_writer;
GRANT SELECT(endpoint_id) ON TABLE outbox.messages TO outbox_sidecar;


--
-- Name: COLUMN messages.ordering_key; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(ordering_key) ON TABLE outbox.messages TO outbox_sidecar;
GRANT INSERT(ordering_key) ON TABLE outbox.messages TO outbox_writer;


--
-- Name: COLUMN messages.deliver_after; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(deliver_after) ON TABLE outbox.messages TO outbox_sidecar;
GRANT INSERT(deliver_after) ON TABLE outbox.messages TO outbox_writer;


--
-- Name: COLUMN messages.created_at; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(created_at) ON TABLE outbox.messages TO outbox_sidecar;


--
-- Name: COLUMN messages.tenant_id; Type: ACL; Schema: outbox; Owner: -
--

GRANT INSERT(tenant_id) ON TABLE outbox.messages TO outbox_writer;
GRANT SELECT(tenant_id) ON TABLE outbox.messages TO outbox_sidecar;


--
-- Name: COLUMN messages.routed; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT(routed),UPDATE(routed) ON TABLE outbox.messages TO outbox_sidecar;


--
-- Name: TABLE message_status; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.message_status TO outbox_writer;
GRANT SELECT ON TABLE outbox.message_status TO outbox_sidecar;
GRANT SELECT ON TABLE outbox.message_status TO outbox_tenant_reader;


--
-- Name: TABLE schema_migrations; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.schema_migrations TO outbox_sidecar;


--
-- Name: TABLE settings; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.settings TO outbox_sidecar;


--
-- Name: TABLE subscriptions; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT ON TABLE outbox.subscriptions TO outbox_sidecar;


--
-- Name: TABLE waiting; Type: ACL; Schema: outbox; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE outbox.waiting TO outbox_sidecar;


--
-- PostgreSQL database dump complete
--
