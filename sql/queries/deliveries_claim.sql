-- Claim up to $2 due deliveries for lease owner $1 for $3 seconds, walking
-- endpoints from after endpoint $4 (where this sidecar's previous claim
-- left off; '' from the start); the statement commits before any HTTP
-- call. How rows are chosen: outbox.claim in sql/schema.sql (its comment
-- and body).
SELECT * FROM outbox.claim($1, $2, $3, $4)
