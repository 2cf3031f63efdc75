-- What logical wake-up needs, in one row: wal_level, REPLICATION or
-- superuser, the publication ($1), and a free replication slot.
SELECT current_setting('wal_level') AS wal_level,
       current_user::text AS role,
       (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) AS may_replicate,
       EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS has_publication,
       (SELECT count(*) FROM pg_replication_slots) AS slots_used,
       current_setting('max_replication_slots')::int AS slots_max
