-- One backfill batch of adopted table $1: rows written from $2 until the
-- adoption, at most $3 of them, after the keyset ($4, $5) of the previous
-- batch (NULLs for the first). Idempotent: existing event ids are skipped.
SELECT scanned, inserted, last_at, last_id
FROM outbox.adopt_backfill($1::text::regclass, $2, $3, $4, $5)
