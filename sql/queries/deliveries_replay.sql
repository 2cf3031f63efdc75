-- Replay dead delivery $1, recording $2 as who asked; false unless it was
-- dead.
SELECT outbox.replay($1::bigint, $2::text)
