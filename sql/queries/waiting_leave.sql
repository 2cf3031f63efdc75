-- Sidecar $1 no longer waits for producers' NOTIFY: it is busy with a
-- backlog (a full claim), or shutting down.
DELETE FROM outbox.waiting WHERE worker_id = $1
