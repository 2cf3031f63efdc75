-- NOTIFY only while a sidecar waits for it. Every notifying commit takes a
-- database-wide lock, which serialises concurrent producers; a sidecar
-- busy with a backlog does not need the hint, since it claims again as
-- soon as its slots free up. A sidecar in notify mode keeps a row here
-- except while a backlog keeps it busy (from a full claim until it goes
-- idle); the insert trigger notifies only when a row exists. The race (a
-- producer checked while the sidecar was busy, committed after its last
-- claim) is closed by the sidecar looking again shortly after it goes
-- idle, and at worst by the state poll.

-- Unlogged: it is scratch state, rebuilt by the sidecars after a crash.
CREATE UNLOGGED TABLE outbox.waiting (
    worker_id text PRIMARY KEY,
    since     timestamptz NOT NULL DEFAULT now()
);

-- SECURITY DEFINER: producers need no rights on outbox.waiting.
CREATE OR REPLACE FUNCTION outbox.notify_sidecar() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox.waiting) THEN
        PERFORM pg_notify('outboxd_wakeup', '');
    END IF;
    RETURN NULL;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON outbox.waiting TO outbox_sidecar;
