-- Register an endpoint: $1 id, $2 url, $3 secrets, $4 event types (NULL:
-- all), $5 timeout in ms (NULL: the sidecar's default), $6 tenant (NULL:
-- none).
INSERT INTO outbox.endpoints (id, url, secrets, event_types, timeout_ms, tenant_id)
VALUES ($1, $2, $3, $4, $5, $6)
