-- Logical wake-up (OUTBOXD_WAKEUP=logical): a publication of inserts into
-- outbox.messages for the sidecar's temporary replication slot, and a
-- switch for the NOTIFY trigger that such producers no longer need.
--
-- A publication can be created whatever wal_level is; it is only used when
-- wal_level = logical.

-- A leftover from a dropped outbox schema would block this migration.
DROP PUBLICATION IF EXISTS outboxd_messages;
CREATE PUBLICATION outboxd_messages FOR TABLE outbox.messages WITH (publish = 'insert');

-- Turn the NOTIFY wake-up trigger on or off (run as the owner of
-- outbox.messages). With logical wake-up, off saves producers the commit-
-- time lock that NOTIFY takes. Returns the new state.
CREATE FUNCTION outbox.set_notify(enabled boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF enabled THEN
        ALTER TABLE outbox.messages ENABLE TRIGGER messages_notify;
    ELSE
        ALTER TABLE outbox.messages DISABLE TRIGGER messages_notify;
    END IF;
    RETURN enabled;
END
$$;
