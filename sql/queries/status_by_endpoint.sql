-- `outboxd status`: one JSON array, one object per endpoint, built from
-- the outbox.endpoint_health view; only tenant $1's endpoints unless $1 is
-- NULL.
SELECT coalesce(json_agg(json_build_object(
           'endpoint_id', h.endpoint_id,
           'tenant_id', h.tenant_id,
           'enabled', h.enabled,
           'disabled_reason', h.disabled_reason,
           'pending', h.pending,
           'in_flight', h.in_flight,
           'dead', h.dead,
           'oldest_pending_age_secs', round(extract(epoch FROM h.oldest_pending_age)::numeric, 3),
           'last_success_at', h.last_success_at,
           'failure_streak', h.failure_streak,
           'failing_since', h.failing_since
       ) ORDER BY h.endpoint_id), '[]')::text
FROM outbox.endpoint_health h
WHERE $1::text IS NULL OR h.tenant_id = $1
