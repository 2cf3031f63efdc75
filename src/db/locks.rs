//! Every advisory lock outboxd takes, in one list. All but the migration
//! lock are transaction-scoped two-int locks `(space, key)` whose first int
//! is one of outboxd's spaces, `0x6F6278nn` ("obx" and a number): an
//! application's one-bigint locks live in a separate key space in
//! PostgreSQL, and its two-int locks would have to pick these exact first
//! ints to collide. The SQL functions of `sql/migrations` that take these
//! locks spell the numbers out (they run in the hot path); a test checks
//! that every advisory lock in the schema uses a space listed here, for
//! the job listed here.

/// A two-int advisory-lock space of outboxd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// The first int of every lock in the space.
    pub id: i32,
    /// What its locks guard.
    pub guards: &'static str,
    /// The SQL functions that take these locks (the second int's meaning
    /// is theirs), or the Rust module.
    pub taken_by: &'static [&'static str],
}

/// An (endpoint, ordering key): routing a key's messages and finishing its
/// head delivery (which promotes the next) are serialised per key.
pub const ORDERING_KEY: Space = Space {
    id: 0x6F62_7801,
    guards: "an endpoint's ordering key",
    taken_by: &["outbox.lock_ordering_key", "outbox.try_lock_ordering_key"],
};

/// A (tenant, ordering key) of messages: producers inserting keyed
/// messages, and routing them, keep commit order per key.
pub const MESSAGE_KEY: Space = Space {
    id: 0x6F62_7802,
    guards: "a tenant's message ordering key",
    taken_by: &["outbox.lock_message_key", "outbox.try_lock_message_key"],
};

/// An endpoint being claimed: one claim at a time per endpoint, so that
/// `max_in_flight` holds across replicas.
pub const ENDPOINT_CLAIM: Space = Space {
    id: 0x6F62_7803,
    guards: "an endpoint's claims",
    taken_by: &["outbox.claim"],
};

/// The retention purge: one replica at a time (second int 0).
pub const PURGE: Space = Space {
    id: 0x6F62_7804,
    guards: "the retention purge",
    taken_by: &["crate::maintenance"],
};

/// Who the endpoints are (second int 0): routing and recovery hold it
/// shared while they make deliveries for the endpoints they read (routing
/// only tries, and skips its turn while a change holds it); deleting an
/// endpoint, or giving it a new id or tenant, takes it exclusively, so
/// that change and routing each see the other's result.
pub const ENDPOINT_CHANGES: Space = Space {
    id: 0x6F62_7805,
    guards: "routing against endpoint deletes, renames and tenant moves",
    taken_by: &[
        "outbox.route",
        "outbox.recover",
        "outbox.keep_endpoints_with_deliveries",
        "outbox.check_endpoint_tenant",
    ],
};

/// Every space, for the test that checks the schema against this list.
pub const SPACES: [Space; 5] = [
    ORDERING_KEY,
    MESSAGE_KEY,
    ENDPOINT_CLAIM,
    PURGE,
    ENDPOINT_CHANGES,
];

/// The one lock outside the spaces: `outboxd migrate` takes this one-bigint
/// lock ("outboxd" in ASCII) for the whole migration transaction. It keeps
/// the form every earlier version used, so that migrations run by an old
/// and a new binary at once still exclude each other.
pub const MIGRATION: i64 = 0x6f7574626f7864;
