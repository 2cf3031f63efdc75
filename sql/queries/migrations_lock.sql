-- Take the migration lock for this transaction: one `outboxd migrate` at a
-- time (a one-bigint lock, see src/db/locks.rs).
SELECT pg_advisory_xact_lock($1)
