-- Why a pending delivery is not being sent (issue 20). A disabled endpoint's
-- deliveries stay pending until it is enabled again; message_status showed
-- them as plain `pending` with no next attempt and no error, so an
-- application could not tell a stuck delivery from a slow one. The new last
-- column, waiting_reason, names the disabled endpoint and why it was
-- disabled (its disabled_reason: an operator's note, `410 Gone`, or the
-- automatic disable after --disable-after of failures). NULL otherwise.
--
-- The view keeps 0013's tenant filter: an outbox_tenant_reader session sees
-- its tenant's rows only, and a delivery's endpoint is of the same tenant,
-- so the reason shown is always about the reader's own endpoint.

CREATE OR REPLACE VIEW outbox.message_status AS
SELECT d.id                AS delivery_id,
       m.id                AS message_id,
       m.event_id,
       m.event_type,
       d.endpoint_id,
       d.status,
       d.attempts,
       d.last_status_code,
       d.last_error,
       CASE WHEN d.status = 'pending' AND d.next_attempt_at <> 'infinity'
            THEN d.next_attempt_at END AS next_attempt_at,
       d.delivered_at,
       m.ordering_key,
       m.created_at,
       d.updated_at,
       m.tenant_id,
       CASE WHEN d.status = 'pending' AND NOT e.enabled
            THEN format('endpoint %s is disabled: %s', e.id,
                        coalesce(e.disabled_reason, 'no reason recorded'))
       END AS waiting_reason
FROM outbox.deliveries d
JOIN outbox.messages m ON m.id = d.message_id
JOIN outbox.endpoints e ON e.id = d.endpoint_id
WHERE (SELECT outbox.tenant_scope()) IS NULL OR m.tenant_id = (SELECT outbox.tenant_scope())
UNION ALL
SELECT NULL,
       m.id,
       m.event_id,
       m.event_type,
       m.endpoint_id,
       'pending',
       0,
       NULL,
       NULL,
       coalesce(m.deliver_after, m.created_at),
       NULL,
       m.ordering_key,
       m.created_at,
       m.created_at,
       m.tenant_id,
       NULL
FROM outbox.messages m
WHERE NOT m.routed
  AND ((SELECT outbox.tenant_scope()) IS NULL OR m.tenant_id = (SELECT outbox.tenant_scope()));

COMMENT ON VIEW outbox.message_status IS
'One row per message and target endpoint with the delivery state, attempts and last error: what applications query for delivery status. Unrouted messages show as pending. waiting_reason says why a pending delivery is not being sent (its endpoint is disabled, and why); NULL otherwise.';
