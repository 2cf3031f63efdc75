-- Claim up to $2 due deliveries for lease owner $1 for $3 seconds; the
-- statement commits before any HTTP call. A claiming sidecar is busy, so
-- it no longer asks producers to NOTIFY it (outbox.waiting). See
-- outbox.claim in sql/migrations/0006_ordering_and_fairness.sql for how
-- rows are chosen.
WITH busy AS (
    DELETE FROM outbox.waiting WHERE worker_id = $1
)
SELECT * FROM outbox.claim($1, $2, $3)
