//! outboxd turns rows that an application INSERTs into a PostgreSQL outbox
//! table, inside its own transaction, into signed webhooks (Standard
//! Webhooks, HMAC-SHA256) delivered at least once, and writes every outcome
//! back to PostgreSQL so that status is one `SELECT` away.
//!
//! The library is the sidecar itself (run it in-process with
//! [`sidecar::run`] and a [`config::Config`]) and the signing code that
//! Rust receivers can reuse ([`signature`]). The command line, the demo and
//! the benchmark are the default feature `cli`; leave it out
//! (`default-features = false`) to embed the core alone.
//!
//! Runnable examples live in the repository's `examples/`: `app.rs` (an
//! application writing a business row and its event in one transaction),
//! `receiver.rs` (a hyper receiver verifying with [`signature::Verifier`]
//! and deduplicating by `webhook-id`) and `sql/` (the same from psql).
//!
//! # Layout
//! The core, from the bottom up:
//! - [`signature`]: Standard Webhooks signing and verification, HMAC
//!   (`whsec_`, `v1,`) and ed25519 (`whsk_`/`whpk_`, `v1a,`);
//! - [`retry`]: the retry schedule, jitter and `Retry-After`;
//! - [`config`]: validated settings;
//! - [`telemetry`]: metric names and recording helpers;
//! - [`db`]: connections ([`db::slot`]: how every long-lived one is kept
//!   and recovered), TLS, embedded migrations, the advisory-lock spaces and
//!   the named queries of `sql/queries` (what is claimed, how an outcome is
//!   written);
//! - [`delivery`]: one attempt: sign, POST, read a bounded answer, judge;
//!   the SSRF guard and the HTTP clients;
//! - [`wakeup`]: `LISTEN` or a logical replication slot;
//! - [`dispatcher`]: the main loop: wake, route and claim, start delivery
//!   tasks; when to claim is [`dispatcher`]'s `pace`;
//! - [`router`]: routes a backlog of committed messages in the background;
//! - [`writer`]: fenced, batched outcome write-back;
//! - [`maintenance`]: backlog gauges and the retention purge;
//! - [`console`]: the web console for operators (sign-in, CSRF, pages,
//!   recovery buttons), served by the admin server when configured;
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, and `/console` when on;
//! - [`sidecar`]: wiring, start-up checks and the shutdown sequence of
//!   `outboxd run`.
//!
//! The edge (feature `cli`):
//! - `cli`: the command line, one module per command owning its options;
//! - `demo`: `outboxd demo`;
//! - `bench`: `outboxd bench`, the product measured beside the machine's
//!   ceilings;
//! - `embedded`: throwaway PostgreSQL and loopback receiver for the demo,
//!   the benchmark and the tests;
//! - `table`: plain-text tables for the commands' output.
//!
//! Only [`config`], [`retry`], [`signature`] and [`sidecar`] are the API.
//! The other core modules are public for the integration tests, which
//! drive them against a real PostgreSQL; they are hidden from the docs and
//! may change in any release.

#![warn(missing_docs)]

pub mod config;
pub mod retry;
pub mod sidecar;
pub mod signature;

#[doc(hidden)]
pub mod admin;
#[doc(hidden)]
pub mod console;
#[doc(hidden)]
pub mod db;
#[doc(hidden)]
pub mod delivery;
#[doc(hidden)]
pub mod dispatcher;
#[doc(hidden)]
pub mod maintenance;
#[doc(hidden)]
pub mod router;
#[doc(hidden)]
pub mod telemetry;
#[doc(hidden)]
pub mod wakeup;
#[doc(hidden)]
pub mod writer;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod demo;
#[cfg(feature = "cli")]
pub mod embedded;
#[cfg(feature = "cli")]
pub mod table;
