-- Put secret $2 first on endpoint $1 (it signs from the next attempt on);
-- with $3 true drop every other secret. Returns how many secrets remain.
UPDATE outbox.endpoints
SET secrets = CASE WHEN $3 THEN ARRAY[$2]
                   ELSE ARRAY[$2] || array_remove(secrets, $2) END,
    updated_at = now()
WHERE id = $1
RETURNING cardinality(secrets)
