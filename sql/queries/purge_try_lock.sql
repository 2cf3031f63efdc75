-- Try the retention purge's lock (space $1, see src/db/locks.rs) for this
-- transaction: one replica purges at a time, the others skip their round.
SELECT pg_try_advisory_xact_lock($1, 0)
