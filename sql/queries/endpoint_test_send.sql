-- `outboxd endpoint test`: an event addressed to endpoint $1 (in its
-- tenant) that goes through the normal path (routing, claim, sidecar).
-- Returns the message id; no row when the endpoint does not exist.
INSERT INTO outbox.messages (event_type, payload, endpoint_id, tenant_id)
SELECT 'outboxd.test',
       jsonb_build_object('type', 'outboxd.test',
                          'data', jsonb_build_object('sent_by', 'outboxd endpoint test', 'at', now())),
       e.id,
       e.tenant_id
FROM outbox.endpoints e
WHERE e.id = $1
RETURNING id, event_id
