-- Endpoints for `outboxd endpoint list`, secrets counted, never shown (the
-- command masks URL credentials and query strings).
SELECT id,
       url,
       enabled,
       coalesce(disabled_reason, '') AS disabled_reason,
       coalesce(array_to_string(event_types, ','), '*') AS event_types,
       cardinality(secrets) AS secrets,
       coalesce(timeout_ms::text, 'default') AS timeout_ms,
       max_in_flight
FROM outbox.endpoints
ORDER BY id
