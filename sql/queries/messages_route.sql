-- Route up to $1 committed messages into their deliveries (see outbox.route
-- in sql/migrations/0013_tenants_and_routing.sql); returns how many. Sent
-- right before each claim, in the same round trip, as its own transaction:
-- what it routes is claimable by the claim that follows.
SELECT outbox.route($1::int)
