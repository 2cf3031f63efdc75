-- Logins of the compose example, created once with the database
-- (/docker-entrypoint-initdb.d) by its owner, `shop`. The application and
-- outboxd log in as different roles, as docs/security.md ("Roles") says:
--
--   shop_app  a member of outbox_writer: writes orders and their events,
--             reads delivery status; cannot read endpoints' secrets or URLs;
--   outboxd   a member of outbox_sidecar: delivers; cannot insert
--             messages, re-point endpoints or change the schema.
--
-- `shop` stays the schema owner: the migrate service runs `outboxd migrate`
-- as `shop`, and the setup service registers the endpoint as `shop`.
-- `outboxd migrate` creates the two group roles when they are missing and
-- grants their privileges; they are created here first so that the logins
-- can join them before the schema exists.
CREATE ROLE outbox_writer NOLOGIN;
CREATE ROLE outbox_sidecar NOLOGIN;
CREATE ROLE shop_app LOGIN PASSWORD 'shop_app' IN ROLE outbox_writer;
CREATE ROLE outboxd LOGIN PASSWORD 'outboxd' IN ROLE outbox_sidecar;

-- The examples' business table (examples/sql/orders.sql), which the setup
-- service creates as `shop`.
ALTER DEFAULT PRIVILEGES FOR ROLE shop IN SCHEMA public
    GRANT SELECT, INSERT ON TABLES TO shop_app;
ALTER DEFAULT PRIVILEGES FOR ROLE shop IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO shop_app;
