-- A stopping sidecar no longer waits for NOTIFY.
DELETE FROM outbox.waiting WHERE worker_id = $1
