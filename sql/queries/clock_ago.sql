-- The database's clock minus $1 seconds: "24h ago" means by its clock, as
-- every schedule does.
SELECT now() - make_interval(secs => $1::float8)
