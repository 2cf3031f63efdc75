-- The database's clock (the one leases use).
SELECT now()
