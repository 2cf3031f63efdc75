-- Whether outbox.schema_migrations exists (no schema yet: nothing applied).
SELECT to_regclass('outbox.schema_migrations') IS NOT NULL
