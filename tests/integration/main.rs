//! Integration tests: the real sidecar against a real PostgreSQL and real
//! HTTP receivers on 127.0.0.1. See `common` for the harness.

mod common;

mod admin;
mod adopt;
mod asymmetric;
mod bench;
mod claiming;
mod cli;
mod cli_first_use;
mod client_examples;
mod clock;
mod compose;
mod console;
mod container;
mod database_tls;
mod delivery;
mod demo;
mod deploy;
mod docs;
mod egress;
mod endpoint_changes;
mod examples;
mod fuzzing;
mod hygiene;
mod image;
mod keys_cli;
mod logical;
mod migrations;
mod operations;
mod ordering;
mod pooler;
mod recovery;
mod retries;
mod roles;
mod schema;
mod shutdown;
mod sidecar_container;
mod tenants;
mod tls;
mod topologies;
mod validation;
