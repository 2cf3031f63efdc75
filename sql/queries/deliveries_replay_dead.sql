-- Replay endpoint $1's deliveries that died at or after $2, recording $3
-- as who asked; returns how many.
SELECT outbox.replay_dead($1::text, $2::timestamptz, $3::text)
