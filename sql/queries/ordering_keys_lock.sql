-- Take the advisory locks of (endpoint $1[i], ordering key $2[i]) in the
-- same order producers take them (see outbox.fan_out), for the rest of the
-- transaction.
SELECT pg_advisory_xact_lock(outbox.ordering_lock_id(k.endpoint_id, k.ordering_key))
FROM (SELECT DISTINCT endpoint_id, ordering_key
      FROM unnest($1::text[], $2::text[]) AS t(endpoint_id, ordering_key)
      ORDER BY 1, 2) k
