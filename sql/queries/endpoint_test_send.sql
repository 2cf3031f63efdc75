-- `outboxd endpoint test`: an event addressed to endpoint $1 that goes
-- through the normal path (fan-out trigger, sidecar). Returns the message
-- id; its delivery exists once the statement has finished.
INSERT INTO outbox.messages (event_type, payload, endpoint_id)
VALUES ('outboxd.test',
        jsonb_build_object('type', 'outboxd.test',
                           'data', jsonb_build_object('sent_by', 'outboxd endpoint test', 'at', now())),
        $1)
RETURNING id, event_id
