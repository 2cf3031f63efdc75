-- Security: least-privilege roles, insert-time validation with clear
-- errors, and per-endpoint TLS settings.
--
-- Runs on PostgreSQL 13 and later. Roles are cluster-wide, so creating them
-- is idempotent and tolerates another database of the same cluster creating
-- them at the same moment.

-- ---------------------------------------------------------------------------
-- Per-endpoint TLS. All NULL: system roots, no client certificate.
--   ca_pem           trust only these CA certificates for this endpoint
--                    (e.g. an internal CA or a self-signed receiver);
--   client_cert_pem  certificate chain presented for mutual TLS;
--   client_key_pem   its private key: a secret, readable by outbox_sidecar
--                    only, like `secrets`.
ALTER TABLE outbox.endpoints
    ADD COLUMN ca_pem          text,
    ADD COLUMN client_cert_pem text,
    ADD COLUMN client_key_pem  text,
    ADD CONSTRAINT endpoint_client_identity_pair
        CHECK ((client_cert_pem IS NULL) = (client_key_pem IS NULL));

-- ---------------------------------------------------------------------------
-- Settings that SQL enforces, one row. Change with e.g.
--   UPDATE outbox.settings SET max_payload_bytes = 1048576;
CREATE TABLE outbox.settings (
    singleton          boolean PRIMARY KEY DEFAULT true
                       CONSTRAINT settings_single_row CHECK (singleton),
    -- Largest accepted payload, in bytes of its JSON text (the request body).
    max_payload_bytes  integer NOT NULL DEFAULT 262144
                       CONSTRAINT settings_max_payload_positive CHECK (max_payload_bytes > 0)
);
INSERT INTO outbox.settings DEFAULT VALUES;

-- ---------------------------------------------------------------------------
-- Validation. Every error names the problem, never echoes a secret, and uses
-- SQLSTATE 23514 (check_violation) so producers can tell bad input from
-- outages.

-- `whsec_` + base64 of 24..64 bytes (Standard Webhooks HMAC secret), or
-- `whsk_` + base64 of an ed25519 secret key (32-byte seed, or 64 bytes:
-- seed then public key).
CREATE FUNCTION outbox.secret_is_valid(secret text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE
        WHEN secret ~ '^whsec_([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'
            THEN length(decode(substr(secret, 7), 'base64')) BETWEEN 24 AND 64
        WHEN secret ~ '^whsk_([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'
            THEN length(decode(substr(secret, 6), 'base64')) IN (32, 64)
        ELSE false
    END
$$;

CREATE FUNCTION outbox.check_endpoint() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    scheme text := lower(substring(NEW.url FROM '^([A-Za-z][A-Za-z0-9+.-]*):'));
    secret text;
    n integer := 0;
BEGIN
    IF scheme IS DISTINCT FROM 'http' AND scheme IS DISTINCT FROM 'https' THEN
        RAISE EXCEPTION 'outbox.endpoints: url of endpoint "%" has scheme "%"; only http and https are allowed',
                NEW.id, coalesce(scheme, '')
            USING ERRCODE = 'check_violation',
                  HINT = 'Use an absolute URL such as https://hooks.example.com/outbox.';
    END IF;
    IF NEW.url !~* '^https?://[^/?#[:space:]]+' THEN
        RAISE EXCEPTION 'outbox.endpoints: url of endpoint "%" has no host', NEW.id
            USING ERRCODE = 'check_violation',
                  HINT = 'Use an absolute URL such as https://hooks.example.com/outbox.';
    END IF;
    IF NEW.secrets IS NOT NULL THEN
        FOREACH secret IN ARRAY NEW.secrets LOOP
            n := n + 1;
            IF secret IS NULL OR NOT outbox.secret_is_valid(secret) THEN
                RAISE EXCEPTION 'outbox.endpoints: secret #% of endpoint "%" is malformed', n, NEW.id
                    USING ERRCODE = 'check_violation',
                          HINT = 'A secret is whsec_ followed by the standard base64 of 24 to 64 random bytes '
                                 '(outboxd keygen --hmac prints one), or a whsk_ ed25519 key (outboxd keygen).';
            END IF;
        END LOOP;
    END IF;
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

-- Only the checked columns fire it: the sidecar's 410 write (enabled,
-- disabled_reason) does not.
CREATE TRIGGER endpoints_check
    BEFORE INSERT OR UPDATE OF url, secrets, ca_pem, client_cert_pem, client_key_pem
    ON outbox.endpoints
    FOR EACH ROW EXECUTE FUNCTION outbox.check_endpoint();

-- Messages are checked once per statement over the transition table, which
-- costs far less than a row trigger on bulk inserts. The name sorts before
-- messages_fan_out, so bad input is reported before any fan-out work.
-- SECURITY DEFINER: producers need not read outbox.settings.
CREATE FUNCTION outbox.check_messages() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cap integer;
    bad record;
BEGIN
    SELECT n.event_id INTO bad
    FROM new_messages n
    WHERE btrim(n.event_type) = ''
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'outbox.messages: event_type of event_id "%" is empty', bad.event_id
            USING ERRCODE = 'check_violation',
                  HINT = 'Name the kind of event, e.g. order.created: receivers and endpoint filters route on it.';
    END IF;

    SELECT s.max_payload_bytes INTO cap FROM outbox.settings s;
    SELECT n.event_id, octet_length(n.payload::text) AS size INTO bad
    FROM new_messages n
    WHERE octet_length(n.payload::text) > cap
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'outbox.messages: payload of event_id "%" is % bytes, above the cap of % bytes',
                bad.event_id, bad.size, cap
            USING ERRCODE = 'check_violation',
                  HINT = 'Send a reference to large data instead, or raise outbox.settings.max_payload_bytes.';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_check
    AFTER INSERT ON outbox.messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.check_messages();

-- Superseded by messages_check, which says which event and why.
ALTER TABLE outbox.messages DROP CONSTRAINT message_event_type_not_empty;

-- Fan-out writes deliveries and reads endpoints on behalf of producers, who
-- may do neither themselves: it runs as its owner, with a fixed search_path
-- so a producer's own objects cannot stand in for ours.
ALTER FUNCTION outbox.fan_out() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION outbox.fan_out() FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.check_messages() FROM PUBLIC;
REVOKE ALL ON FUNCTION outbox.check_endpoint() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Roles: NOLOGIN groups that operators grant to their login roles, e.g.
--   GRANT outbox_writer TO shop_app;  GRANT outbox_sidecar TO outboxd;
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['outbox_writer', 'outbox_sidecar'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = role_name);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        EXCEPTION
            -- Another database of this cluster created it meanwhile.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'outboxd needs the role % and may not create it', role_name
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'Have an administrator run CREATE ROLE outbox_writer NOLOGIN; '
                                 'CREATE ROLE outbox_sidecar NOLOGIN; then run outboxd migrate again.';
        END;
    END LOOP;
END
$roles$;

-- Applications: insert messages (RETURNING id/event_id included), read
-- delivery status and which endpoints exist. Not: secrets, TLS keys, URLs
-- (they may carry tokens), deliveries, attempts (response bodies).
GRANT USAGE ON SCHEMA outbox TO outbox_writer;
GRANT INSERT ON outbox.messages TO outbox_writer;
GRANT SELECT (id, event_id) ON outbox.messages TO outbox_writer;
GRANT SELECT ON outbox.message_status TO outbox_writer;
GRANT SELECT (id, event_types, enabled, disabled_reason) ON outbox.endpoints TO outbox_writer;

-- The sidecar: what `outboxd run` reads and writes, nothing more. It cannot
-- insert messages, create or re-point endpoints, or delete anything; schema
-- changes (`outboxd migrate`) need the schema owner.
GRANT USAGE ON SCHEMA outbox TO outbox_sidecar;
GRANT SELECT ON outbox.schema_migrations TO outbox_sidecar;
GRANT SELECT ON outbox.endpoints TO outbox_sidecar;
GRANT UPDATE (enabled, disabled_reason, updated_at) ON outbox.endpoints TO outbox_sidecar;
GRANT SELECT (id, event_id, event_type, payload) ON outbox.messages TO outbox_sidecar;
GRANT SELECT ON outbox.deliveries TO outbox_sidecar;
GRANT UPDATE (status, attempts, next_attempt_at, lease_owner, last_status_code, last_error,
              delivered_at, updated_at)
    ON outbox.deliveries TO outbox_sidecar;
GRANT INSERT ON outbox.attempts TO outbox_sidecar;
-- The outcome write returns the ids it logged.
GRANT SELECT (delivery_id, attempt) ON outbox.attempts TO outbox_sidecar;
GRANT SELECT ON outbox.settings TO outbox_sidecar;
GRANT SELECT ON outbox.message_status TO outbox_sidecar;
