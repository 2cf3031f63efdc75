//! The commands other than `run`, `migrate` and `demo`: `status`,
//! `endpoint ...`, `replay`, `resend`, `recover`, `retry-schedule`, `verify`, `keygen`, `adopt`/`unadopt`,
//! `healthcheck` and `bench`. Each talks to the database
//! with one short-lived connection through the named queries in
//! `sql/queries`, prints something a person can read (or JSON for
//! scripts), and fails with one clear line.

pub mod adopt;
pub mod bench;
pub mod endpoint;
pub mod healthcheck;
pub mod keygen;
pub mod recover;
pub mod replay;
pub mod resend;
pub mod retry_schedule;
pub mod status;
pub mod table;
pub mod tenant_guard;
pub mod verify;
