-- Create this sidecar's temporary logical replication slot $1 (pgoutput):
-- it lives as long as the session, so a dead sidecar never pins WAL.
SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)
