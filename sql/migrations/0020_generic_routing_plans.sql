-- Routing one message cost about 1 ms, most of it planning.
--
-- PL/pgSQL caches each statement's plan, but for a statement with
-- parameters (here the picked ids, an array) PostgreSQL plans it afresh
-- for its first five runs and keeps doing so whenever its estimate of the
-- generic plan is worse than the custom ones. route_targets' UNION of
-- lateral joins was planned on every call: 0.6 ms of the 0.75 ms it took
-- for one message (0.13 ms with a generic plan), and routing sits on the
-- path of every message at low load. outbox.claim already forces generic
-- plans; route and route_targets now do too. Their statements run on
-- their indexes whatever the estimates (enable_seqscan = off), so a plan
-- made once per session is as good as one made per call.
--
-- Measured on PostgreSQL 15, one message at a time (2 cores): route 1.0 ms
-- -> 0.27 ms.

ALTER FUNCTION outbox.route(integer) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION outbox.route_targets(bigint[]) SET plan_cache_mode = force_generic_plan;
