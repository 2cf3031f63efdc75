-- Enable ($2 true) or disable ($2 false, reason $3) endpoint $1. Deliveries
-- of a disabled endpoint stay pending; enabling resumes them. Returns the
-- endpoint's id, or nothing when it does not exist.
UPDATE outbox.endpoints
SET enabled = $2,
    disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END,
    failure_streak = CASE WHEN $2 THEN 0 ELSE failure_streak END,
    failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END,
    updated_at = now()
WHERE id = $1
RETURNING id
