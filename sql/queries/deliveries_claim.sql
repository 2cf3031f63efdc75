-- Claim up to $2 due deliveries for lease owner $1 for $3 seconds; the
-- statement commits before any HTTP call. See outbox.claim in
-- sql/migrations/0006_ordering_and_fairness.sql for how rows are chosen.
SELECT * FROM outbox.claim($1, $2, $3)
