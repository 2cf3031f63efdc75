-- Per endpoint, for the gauges: pending deliveries and the age of the
-- oldest one, dead deliveries, and whether the endpoint is enabled. Walks
-- only open and dead rows through the endpoint/status indexes.
SELECT e.id AS endpoint_id,
       e.enabled,
       p.pending,
       p.oldest_secs,
       x.dead
FROM outbox.endpoints e
CROSS JOIN LATERAL (
    SELECT count(*) AS pending,
           extract(epoch FROM now() - min(d.created_at))::float8 AS oldest_secs
    FROM outbox.deliveries d
    WHERE d.endpoint_id = e.id AND d.status = 'pending'
) p
CROSS JOIN LATERAL (
    SELECT count(*) AS dead
    FROM outbox.deliveries d
    WHERE d.endpoint_id = e.id AND d.status = 'dead'
) x
