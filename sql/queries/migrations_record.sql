-- Record migration $1 (file $2) as applied.
INSERT INTO outbox.schema_migrations (version, name) VALUES ($1, $2)
