-- Message $1's deliveries, by endpoint.
SELECT d.id, d.endpoint_id, d.status, d.attempts, d.last_status_code, d.last_error,
       CASE WHEN d.status = 'pending' AND d.next_attempt_at = 'infinity' THEN 'after the earlier messages of its key'
            ELSE to_char(d.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') END AS next_attempt,
       to_char(d.delivered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"') AS delivered
FROM outbox.deliveries d
WHERE d.message_id = $1
ORDER BY d.endpoint_id
