-- Replay dead delivery $1: pending again with a fresh retry schedule.
-- Returns whether it was dead.
SELECT outbox.replay($1)
