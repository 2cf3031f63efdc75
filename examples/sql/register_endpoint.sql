-- Registers (or updates) an endpoint that receives every event type.
-- Run `outboxd migrate` first. Generate a secret with `outboxd endpoint add`
-- or: echo "whsec_$(head -c 32 /dev/urandom | base64)"
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 \
--        -v endpoint_id=shop -v url=http://127.0.0.1:8080/webhook -v secret=whsec_... \
--        -f examples/sql/register_endpoint.sql
INSERT INTO outbox.endpoints (id, url, secrets)
VALUES (:'endpoint_id', :'url', ARRAY[:'secret'])
ON CONFLICT (id) DO UPDATE
SET url = excluded.url, secrets = excluded.secrets, enabled = true, disabled_reason = NULL
RETURNING id, url, enabled;
