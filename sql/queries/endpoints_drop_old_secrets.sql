-- Keep only the newest (first) secret of endpoint $1, ending a rotation.
UPDATE outbox.endpoints
SET secrets = secrets[1:1],
    updated_at = now()
WHERE id = $1
RETURNING cardinality(secrets)
