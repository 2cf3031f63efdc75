//! The commands other than `run`, `migrate` and `demo`: `status`,
//! `endpoint ...`, `replay`, `verify`, `keygen`, `adopt`/`unadopt`,
//! `healthcheck` and `bench`. Each talks to the database
//! with one short-lived connection through the named queries in
//! `sql/queries`, prints something a person can read (or JSON for
//! scripts), and fails with one clear line.

pub mod adopt;
pub mod bench;
pub mod endpoint;
pub mod healthcheck;
pub mod keygen;
pub mod replay;
pub mod status;
pub mod table;
pub mod verify;
