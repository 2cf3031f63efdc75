-- A message by event_id, for the console (not its payload).
SELECT m.id, m.event_id, m.event_type, m.tenant_id, m.endpoint_id, m.ordering_key, m.routed,
       to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS created
FROM outbox.messages m
WHERE m.event_id = $1
