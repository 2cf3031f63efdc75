//! The operator commands other than `run`: `status`, `endpoint ...`,
//! `replay`, `verify` and `adopt`/`unadopt`. Each talks to the database
//! with one short-lived connection through the named queries in
//! `sql/queries`, prints something a person can read (or JSON for
//! scripts), and fails with one clear line.

pub mod adopt;
pub mod endpoint;
pub mod keygen;
pub mod replay;
pub mod status;
pub mod table;
pub mod verify;
