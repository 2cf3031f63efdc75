-- Replay dead delivery $1 (pending again with a fresh retry schedule),
-- recording $2 as who asked; false unless it was dead.
SELECT outbox.replay($1::bigint, $2::text)
