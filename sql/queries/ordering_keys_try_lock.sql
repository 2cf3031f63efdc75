-- Try the advisory locks of (endpoint $1[i], ordering key $2[i]) for the
-- rest of the transaction, without waiting (see outbox.try_lock_ordering_key
-- in 0012). Returns the keys someone else holds: their outcomes are written
-- later, so a held key never stalls other outcomes.
SELECT k.endpoint_id, k.ordering_key
FROM unnest($1::text[], $2::text[]) AS k(endpoint_id, ordering_key)
WHERE NOT outbox.try_lock_ordering_key(k.endpoint_id, k.ordering_key)
