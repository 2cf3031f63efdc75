-- Sidecar $1 no longer waits for producers' NOTIFY: a claim found work,
-- so it looks again every few ms until it has found none for a while; or
-- it is shutting down.
DELETE FROM outbox.waiting WHERE worker_id = $1
