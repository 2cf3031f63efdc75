-- Rights of outbox_writer and outbox_sidecar (0004) on what came with
-- operations (0003), ordering and fairness (0006) and logical wake-up
-- (0008). Functions are EXECUTE for PUBLIC unless revoked; triggers run
-- with the rights of the role whose statement fires them.

-- Applications read the status views and the operational events.
GRANT SELECT ON outbox.endpoint_health, outbox.events TO outbox_writer;

-- The sidecar:
-- - claims read the message's age and deliver_after (keyed releases);
GRANT SELECT (created_at, deliver_after, ordering_key) ON outbox.messages TO outbox_sidecar;
-- - outcome writes keep endpoint health, claims spend rate-limit tokens;
GRANT UPDATE (last_success_at, failure_streak, failing_since, rate_tokens, rate_updated_at)
    ON outbox.endpoints TO outbox_sidecar;
-- - a dead delivery or a disabled endpoint records an operational event;
GRANT INSERT, SELECT ON outbox.events TO outbox_sidecar;
GRANT SELECT ON outbox.endpoint_health TO outbox_sidecar;
-- - the retention purge deletes finished deliveries (their attempts go by
--   cascade), messages with no delivery left, and old events.
GRANT DELETE ON outbox.deliveries, outbox.messages, outbox.events TO outbox_sidecar;
