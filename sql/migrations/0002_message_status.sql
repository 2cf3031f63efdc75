-- "Was event X delivered, and if not, why?" in one SELECT:
--   SELECT * FROM outbox.message_status WHERE event_id = 'X';

CREATE VIEW outbox.message_status AS
SELECT d.id                AS delivery_id,
       m.id                AS message_id,
       m.event_id,
       m.event_type,
       d.endpoint_id,
       d.status,
       d.attempts,
       d.last_status_code,
       d.last_error,
       CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.delivered_at,
       m.ordering_key,
       m.created_at,
       d.updated_at
FROM outbox.deliveries d
JOIN outbox.messages m ON m.id = d.message_id;
