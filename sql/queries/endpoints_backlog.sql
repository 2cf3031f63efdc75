-- Pending deliveries and the age of the oldest one, per endpoint (for the
-- backlog gauges). Walks only open rows through the endpoint/status index.
SELECT e.id AS endpoint_id,
       count(d.id) AS pending,
       extract(epoch FROM now() - min(d.created_at))::float8 AS oldest_secs
FROM outbox.endpoints e
LEFT JOIN outbox.deliveries d ON d.endpoint_id = e.id AND d.status = 'pending'
GROUP BY e.id
