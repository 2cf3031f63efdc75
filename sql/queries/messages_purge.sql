-- One retention page of messages: delete, among up to $3 messages after id
-- $1, those older than $2 seconds that have no delivery left (all purged,
-- or none were ever fanned out). Same keyset paging as deliveries_purge;
-- outbox.purge_messages (0012) is the only way the sidecar may delete
-- messages.
SELECT last_id, deleted, reached_recent
FROM outbox.purge_messages($1, $2, $3)
