-- The console's endpoint list: health per endpoint, never a secret, a
-- header or a URL.
SELECT h.endpoint_id, h.tenant_id, h.enabled, h.disabled_reason, h.pending, h.in_flight, h.dead,
       to_char(h.last_success_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS last_success,
       h.failure_streak
FROM outbox.endpoint_health h
ORDER BY h.tenant_id NULLS FIRST, h.endpoint_id
LIMIT 1000
