//! outboxd turns rows that an application INSERTs into a PostgreSQL outbox
//! table, inside its own transaction, into signed webhooks (Standard
//! Webhooks, HMAC-SHA256) delivered at least once, and writes every outcome
//! back to PostgreSQL so that status is one `SELECT` away.
//!
//! The library is the sidecar itself (run it in-process with
//! [`sidecar::run`]) and the signing code that Rust receivers can reuse
//! ([`signature`]).
//!
//! Runnable examples live in the repository's `examples/`: `app.rs` (an
//! application writing a business row and its event in one transaction),
//! `receiver.rs` (a hyper receiver verifying with [`signature::Verifier`]
//! and deduplicating by `webhook-id`) and `sql/` (the same from psql).
//!
//! # Layout
//! - [`cli`]: command-line definitions and the glue to the library;
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, and `/console` when on;
//! - [`console`]: the web console (sign-in, CSRF, pages, recovery buttons);
//! - [`commands`]: `status`, `endpoint`, `replay`, `resend`, `recover`,
//!   `retry-schedule`, `verify`, `adopt`;
//! - [`config`]: validated settings;
//! - [`db`]: connections (TLS as the URL's `sslmode` asks, [`db::tls`]),
//!   embedded migrations (`sql/migrations`) and the named queries
//!   (`sql/queries`);
//! - [`sidecar`]: wiring and the shutdown sequence of `outboxd run`;
//! - [`wakeup`]: `LISTEN` or a logical replication slot, with reconnects;
//! - [`dispatcher`]: the main loop: wake, route and claim, start delivery
//!   tasks;
//! - [`router`]: routes a backlog of committed messages in the background;
//! - [`delivery`]: one attempt: sign, POST, read a bounded answer, judge;
//!   [`delivery::egress`] is the SSRF guard (which addresses may be
//!   reached), [`delivery::client`] the shared and per-endpoint (custom
//!   TLS) HTTP clients;
//! - [`writer`]: fenced, batched outcome write-back;
//! - [`maintenance`]: backlog gauges and the retention purge;
//! - [`retry`]: the retry schedule, jitter and `Retry-After`;
//! - [`signature`]: Standard Webhooks signing and verification;
//! - [`telemetry`]: metric names and recording helpers;
//! - [`signature`]: Standard Webhooks signing and verification, HMAC
//!   (`whsec_`, `v1,`) and ed25519 ([`signature::ed25519`]: `whsk_`/`whpk_`,
//!   `v1a,`);
//! - [`embedded`]: throwaway PostgreSQL and loopback receiver for the demo,
//!   the benchmark and the tests;
//! - [`demo`]: `outboxd demo`;
//! - [`bench`]: `outboxd bench`, the product measured beside the machine's
//!   ceilings.

#![warn(missing_docs)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod db;
pub mod delivery;
pub mod demo;
pub mod dispatcher;
pub mod embedded;
pub mod maintenance;
pub mod retry;
pub mod router;
pub mod sidecar;
pub mod signature;
pub mod telemetry;
pub mod wakeup;
pub mod writer;
