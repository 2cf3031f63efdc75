-- One endpoint for the console: what it is and its health. The URL is
-- redacted by the caller; secrets, headers and TLS keys are not read.
SELECT e.id, e.tenant_id, e.url, e.event_types, e.enabled, e.disabled_reason,
       e.retry_schedule::text[] AS retry_schedule, h.pending, h.in_flight, h.dead,
       to_char(h.last_success_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS last_success,
       h.failure_streak
FROM outbox.endpoints e
JOIN outbox.endpoint_health h ON h.endpoint_id = e.id
WHERE e.id = $1
