-- Which sidecar made each attempt: its `--worker-id` (the lease owner of the
-- claim). With several replicas this tells an operator which one sent a
-- request, e.g. the replica whose network is broken, and lets tests prove
-- that work spreads over replicas. NULL for attempts logged before this
-- migration.
ALTER TABLE outbox.attempts ADD COLUMN worker_id text;
