-- What each object is for, kept with the object (issue 17). The migrations
-- before this one say why each change was made; these comments say what
-- the live objects do, and sql/schema.sql (generated from a migrated
-- database) shows them beside the live bodies. Advisory-lock spaces are
-- listed in src/db/locks.rs.

COMMENT ON TABLE outbox.messages IS
'What producers INSERT, in the transaction that changes their business data. A message fans out to a delivery per matching endpoint when it is routed (outbox.route), or goes to its endpoint_id alone. Checked at insert by CHECK constraints and, when it names an endpoint or an ordering key, by outbox.accept_message.';
COMMENT ON TABLE outbox.endpoints IS
'Webhook receivers: URL, signing secrets, subscriptions (event_types, tenant_id), limits, health (last success, failure streak) and whether enabled. Checked by outbox.check_endpoint; outbox.subscriptions is kept from it.';
COMMENT ON TABLE outbox.deliveries IS
'One message to one endpoint: status pending, in_flight, delivered, dead or cancelled. A claim sets status in_flight, lease_owner and next_attempt_at (the lease expiry); every outcome is written only under the same claim (owner, attempt, lease expiry).';
COMMENT ON TABLE outbox.attempts IS
'One row per HTTP attempt: status code, error, duration, the start of the answer, and which worker made it.';
COMMENT ON TABLE outbox.events IS
'What operators and the sidecar did to endpoints and deliveries (replays, disables, enables, secret rotations), for audit.';
COMMENT ON TABLE outbox.subscriptions IS
'Derived from outbox.endpoints by outbox.sync_subscriptions: one row per (tenant, event type, enabled endpoint), so routing finds subscribers with an index probe. Never written by hand.';
COMMENT ON TABLE outbox.settings IS
'One row of database-wide settings (max_payload_bytes, notify).';

-- Functions by name: every overload (replay and replay_dead have a form
-- that records who asked) gets the note.
DO $notes$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS signature, n.note
        FROM (VALUES
        ('claim', 'Claims up to max_rows due deliveries for owner, leased for lease_secs, and returns everything needed to send them. Walks the endpoints that have open deliveries from after after_endpoint (wrapping around), one index descent each, so its cost follows the batch, not the fleet; each endpoint is claimed under its lock (space 0x6F627803) and within max_in_flight; the batch is shared fairly by tenant, then by endpoint. Commits before any HTTP call.'),
        ('route', 'Routes up to max committed, unrouted messages into their deliveries (oldest and newest unkeyed ones, scheduled ones that are due, and keyed ones in key order under their key lock), marks them routed, and returns how many. Any number of sidecars may run it at once: rows being routed elsewhere are skipped.'),
        ('route_targets', 'For each message id, the endpoints it goes to: its endpoint_id, or every enabled endpoint of its tenant subscribed to its event type (enabled when the message was written).'),
        ('accept_message', 'Insert-time checks of a message that names an endpoint (it exists and is of the same tenant) or an ordering key (takes the key lock, space 0x6F627802, so keyed messages are routed in commit order).'),
        ('check_endpoint', 'Insert- and update-time rules for endpoints (URL, secrets, headers, limits), checked before the constraints so that no error message shows the row.'),
        ('replay', 'Makes one dead delivery pending again with a fresh retry schedule; returns whether it was dead. Recorded in outbox.events, with who asked when given.'),
        ('replay_dead', 'Makes every dead delivery of an endpoint that died since a time pending again; returns how many. Recorded in outbox.events.'),
        ('purge_messages', 'Deletes one keyset page of routed messages older than the retention whose deliveries are all gone (SECURITY DEFINER: the sidecar role has no DELETE on messages).'),
        ('promote_next_in_key', 'When a keyed delivery finishes, makes the next delivery of its (endpoint, ordering key) due, under the key lock (space 0x6F627801).'),
        ('tenant_scope', 'The tenant an outbox_tenant_reader session may read (the outbox.tenant_id setting); a value matching no tenant when unset, so it reads nothing.'),
        ('resend', 'Sends a delivered, dead or cancelled delivery again (same webhook-id, attempts continue); returns whether it did. Recorded in outbox.events with who asked.'),
        ('recover', 'Gives an endpoint the messages of its tenant and event types it has no delivery for, created in a time range (older than the endpoint included); returns how many. Recorded in outbox.events.'),
        ('set_retry_schedule', 'Sets (or, with NULL, removes) an endpoint''s own retry schedule, used instead of the sidecar''s. Recorded in outbox.events.')
        ) AS n(name, note)
        JOIN pg_proc p ON p.proname = n.name AND p.pronamespace = 'outbox'::regnamespace
    LOOP
        EXECUTE format('COMMENT ON FUNCTION %s IS %L', f.signature, f.note);
    END LOOP;
END
$notes$;

COMMENT ON VIEW outbox.message_status IS
'One row per message and target endpoint with the delivery state, attempts and last error: what applications query for delivery status. Unrouted messages show as pending.';
COMMENT ON VIEW outbox.endpoint_health IS
'Per endpoint: enabled, pending, dead, last success, failure streak, why disabled. No secret or header value.';
