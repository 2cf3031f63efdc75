-- Where are the order events? One row per (event, endpoint), newest first,
-- then each endpoint's health.
--
--   psql "$DATABASE_URL" -f examples/sql/delivery_status.sql
SELECT event_id, endpoint_id, status, attempts, last_status_code, last_error,
       next_attempt_at, delivered_at
FROM outbox.message_status
WHERE event_type LIKE 'order.%'
ORDER BY message_id DESC, endpoint_id
LIMIT 20;

SELECT endpoint_id, enabled, pending, in_flight, dead, oldest_pending_age,
       last_success_at, failure_streak
FROM outbox.endpoint_health
ORDER BY endpoint_id;
