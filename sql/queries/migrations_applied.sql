-- Every applied migration's version.
SELECT version FROM outbox.schema_migrations ORDER BY version
