-- Send delivery $1 again, whatever it became (delivered, dead or
-- cancelled), recording $2 as who asked; false when it is pending, in
-- flight or unknown. See outbox.resend in 0015_recovery_tools.sql.
SELECT outbox.resend($1, $2)
