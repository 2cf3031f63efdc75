-- Whether endpoint $1 is enabled (no row: no such endpoint).
SELECT enabled FROM outbox.endpoints WHERE id = $1
