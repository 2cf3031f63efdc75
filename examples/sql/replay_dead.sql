-- Sends an endpoint's dead deliveries of the last hour again (same
-- webhook-id, so receivers still deduplicate), after fixing the receiver.
-- Prints how many went back to pending.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v endpoint_id=shop -f examples/sql/replay_dead.sql
SELECT outbox.replay_dead(:'endpoint_id', now() - interval '1 hour') AS replayed;
