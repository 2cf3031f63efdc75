-- Replay endpoint $1's deliveries that died at or after $2 (or, when $2 is
-- null, within the last $4 seconds by the database's clock), recording $3
-- as who asked; returns how many.
SELECT outbox.replay_dead($1::text,
                          coalesce($2::timestamptz, now() - make_interval(secs => $4::float8)),
                          $3::text)
