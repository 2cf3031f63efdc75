-- Replay every dead delivery of endpoint $1 that died since $2 (a time),
-- or within the last $3 seconds when $2 is null. Returns how many.
SELECT outbox.replay_dead($1, coalesce($2, now() - make_interval(secs => $3)))
