-- Give endpoint $1 the messages of its tenant written in [$2, $3) ($3 NULL:
-- until now) that it has no delivery for, of event types $4 (NULL: the
-- endpoint's subscription), recording $5 as who asked; returns how many.
-- See outbox.recover in 0015_recovery_tools.sql.
SELECT outbox.recover($1, $2, $3, $4, $5)
