//! The fault-injection suite: the real `outboxd` binary, run as child
//! processes against real PostgreSQL clusters and loopback receivers, while
//! processes are killed, PostgreSQL restarts, connections die silently and
//! receivers misbehave. Every scenario asserts counts: nothing committed is
//! lost, and duplicates stay within what the failure allows.
//!
//! `cargo test --test faults` runs it (a few minutes at most on 2 cores).
//! Each sidecar's log is kept in `target/tmp/faults/<test>/<worker>.log`
//! and its tail printed when a test fails.

#[path = "../integration/common/mod.rs"]
mod common;
mod harness;

mod connection_loss;
mod kill;
mod producers;
mod receiver_outages;
mod replicas;
mod restart;
mod shutdown;
