-- Adopting an application's existing outbox table, most often in the shape
-- Debezium's outbox event router made common (id uuid, aggregatetype,
-- aggregateid, type, payload jsonb): a trigger on that table writes the
-- matching outbox.messages row in the inserting transaction, so the
-- application changes nothing and rows it deletes right after inserting
-- (the Debezium habit) are not lost.
--
--   SELECT outbox.adopt('public.outboxevent');                -- Debezium names
--   SELECT outbox.adopt('app.events', '{"event_type": "kind", "payload": "body"}');
--   SELECT outbox.unadopt('public.outboxevent');
--
-- outbox.adopt installs two objects per table and records them in
-- outbox.adoptions, so that outbox.unadopt drops exactly those and adopting
-- again replaces them in one transaction:
--   * a trigger function outbox.adopted_<schema>_<table>_<oid>(), generated
--     for the table's columns (plain SQL with cached plans; no dynamic SQL
--     per insert);
--   * a trigger "outboxd_adopt" on the table.
--
-- Mapping keys name outbox.messages columns; values name source columns:
--   event_id      (default "id")          any type, cast to text
--   event_type    (default "type")        any type, cast to text
--   payload       (default "payload")     jsonb, json, or text holding JSON
--   ordering_key  (default "aggregateid" when the table has it) any type
--   endpoint_id   (none)                  any type, cast to text
--   deliver_after (none)                  timestamptz, timestamp or date
--   timestamp     (none)                  when the row was written; read by
--                                         outbox.adopt_backfill only
-- A null value turns an optional key off (e.g. {"ordering_key": null}).

CREATE TABLE outbox.adoptions (
    -- regclass dumps as the table's name and survives pg_upgrade.
    source         regclass PRIMARY KEY,
    -- The effective mapping (defaults resolved): key -> source column.
    mapping        jsonb NOT NULL,
    -- The generated trigger function, in schema outbox.
    function_name  name NOT NULL,
    trigger_name   name NOT NULL,
    -- When the current, uninterrupted adoption began (adopting again keeps
    -- it): rows written before it are what a backfill may send.
    adopted_at     timestamptz NOT NULL DEFAULT now()
);

-- The base type of a source column (domains resolved), or NULL when the
-- table has no such user column.
CREATE FUNCTION outbox.adoption_column_type(source regclass, col text) RETURNS regtype
LANGUAGE plpgsql STABLE AS $$
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

-- Validates a mapping against the table and fills in the defaults; returns
-- the effective mapping. Every problem is a clear error naming the key and
-- the column.
CREATE FUNCTION outbox.adoption_mapping(source regclass, mapping jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
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

-- Raised from generated code when a required source column is NULL. Must
-- stay VOLATILE: its arguments are constants, and the planner would fold a
-- stable call at plan time, raising for every statement.
CREATE FUNCTION outbox.adoption_null(source text, col text, target text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'adopted table %: column "%" is NULL, but outbox.messages.% needs a value', source, col, target
        USING ERRCODE = 'not_null_violation';
END
$$;

-- A text payload as jsonb, or an error naming the table and column. The
-- exception block is a subtransaction per row that writes nothing, so it
-- takes no transaction id (no subxid overflow); only text payloads pay it.
CREATE FUNCTION outbox.adoption_json(value text, source text, col text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
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

-- The select list that turns a source row (alias n) into outbox.messages'
-- (event_id, event_type, payload, ordering_key, endpoint_id, deliver_after).
-- Shared by the generated trigger and the backfill.
CREATE FUNCTION outbox.adoption_select_list(source regclass, mapping jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
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
$$;

-- Forgets adoptions whose trigger is gone (the table was dropped, or the
-- trigger by hand) and drops their functions, where the caller may.
CREATE FUNCTION outbox.drop_stale_adoptions() RETURNS integer
LANGUAGE plpgsql AS $$
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

-- Adopts `source`: from now on every row inserted into it also becomes an
-- outbox.messages row, in the same transaction. Rows already in the table
-- are not sent (see outbox.adopt_backfill). Adopting again replaces the
-- trigger and mapping. Returns the effective mapping.
--
-- Why a statement-level trigger with a transition table: one
-- INSERT ... SELECT into outbox.messages per statement, so a bulk insert
-- (or COPY) into the source fires the fan-out trigger and the wake-up
-- NOTIFY once, not once per row; for single-row inserts it costs about the
-- same as a row trigger. Rows keep their insertion order (messages.id
-- follows it, which is what per-ordering-key delivery order follows).
--
-- Why SECURITY DEFINER, owned by the table's owner: the roles that insert
-- into the adopted table need no rights on schema outbox (applications
-- change nothing), while the trigger can do no more than the table's owner
-- could do with a trigger of its own; owning it as the (possibly more
-- privileged) adopter would let whoever controls the table's column types
-- run code with the adopter's rights. search_path is pinned. So: the owner
-- needs INSERT on outbox.messages (checked here), and adopting is a grant:
-- whoever may insert into the table may publish webhooks through it.
CREATE FUNCTION outbox.adopt(source regclass, mapping jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
    effective jsonb;
    previous outbox.adoptions%ROWTYPE;
    fn name;
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
            AND has_table_privilege(rel.relowner, 'outbox.messages', 'INSERT')) THEN
        RAISE EXCEPTION 'outbox.adopt: the owner of % (%) cannot insert into outbox.messages', source, rel.relowner::regrole
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The adopting trigger runs as the table''s owner: grant it USAGE on schema outbox and INSERT on outbox.messages (or the outbox_writer role).';
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
    EXECUTE format($f$
        CREATE FUNCTION outbox.%I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
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
        $body$ $f$, fn, outbox.adoption_select_list(source, effective));
    EXECUTE format('REVOKE ALL ON FUNCTION outbox.%I() FROM PUBLIC', fn);
    EXECUTE format('ALTER FUNCTION outbox.%I() OWNER TO %s', fn, rel.relowner::regrole);
    EXECUTE format('COMMENT ON FUNCTION outbox.%I() IS %L', fn,
                   format('outboxd: feeds outbox.messages from %s (outbox.adopt)', source));
    EXECUTE format($t$
        CREATE TRIGGER %I AFTER INSERT ON %s
        REFERENCING NEW TABLE AS outboxd_adopted_rows
        FOR EACH STATEMENT EXECUTE FUNCTION outbox.%I()
        $t$, trig, source, fn);
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

-- Stops feeding outbox.messages from `source`: drops the trigger and the
-- function that outbox.adopt installed, nothing else. Returns false when
-- the table was not adopted.
CREATE FUNCTION outbox.unadopt(source regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- One backfill batch: sends up to batch_size rows of an adopted table that
-- were written from `since` until the adoption began (by the mapping's
-- "timestamp" column), oldest first, skipping event ids already in
-- outbox.messages, so running it again sends nothing twice. Keyset paging:
-- pass the previous batch's last_at and last_id; the backfill is done when
-- scanned < batch_size. One batch per transaction keeps locks and WAL
-- bounded.
CREATE FUNCTION outbox.adopt_backfill(source regclass, since timestamptz,
                                      batch_size integer DEFAULT 1000,
                                      after_at timestamptz DEFAULT NULL,
                                      after_id text DEFAULT NULL)
RETURNS TABLE (scanned integer, inserted integer, last_at timestamptz, last_id text)
LANGUAGE plpgsql AS $$
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
$$;
