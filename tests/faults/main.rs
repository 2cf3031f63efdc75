//! The fault-injection suite: the real `outboxd` binary, run as child
//! processes against real PostgreSQL clusters and loopback receivers, while
//! processes are killed, PostgreSQL restarts, connections die silently and
//! receivers misbehave. Every scenario asserts counts: nothing committed is
//! lost, and duplicates stay within what the failure allows.
//!
//! `cargo test --test faults` runs it (about 70 s on 2 cores; figures are
//! printed with `-- --nocapture`). Heavier soak variants are `#[ignore]`d;
//! run them by hand with `cargo test --release --test faults -- --ignored
//! --nocapture` (a hundred kills, ten restarts, 250,000 messages over three
//! replicas: about three minutes in release mode, plus the build). Each
//! sidecar's log is kept in `target/tmp/faults/<test>/<worker>.log` and its
//! tail printed when a test fails.
//!
//! `docs/guarantees.md` maps each promise of outboxd to the tests here and
//! in `tests/integration` that prove it.

#[path = "../integration/common/mod.rs"]
mod common;
mod harness;

mod connection_loss;
mod kill;
mod packet_loss;
mod producers;
mod receiver_outages;
mod replicas;
mod restart;
mod shutdown;
