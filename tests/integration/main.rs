//! Integration tests: the real sidecar against a real PostgreSQL and real
//! HTTP receivers on 127.0.0.1. See `common` for the harness.

mod common;

mod adopt;
mod claiming;
mod cli;
mod container;
mod delivery;
mod demo;
mod deploy;
mod docs;
mod examples;
mod logical;
mod migrations;
mod operations;
mod ordering;
mod retries;
mod shutdown;
