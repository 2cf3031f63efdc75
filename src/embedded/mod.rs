//! The embedded defaults behind `outboxd demo` and `outboxd bench`, reused
//! by the integration tests: a throwaway PostgreSQL cluster and a loopback
//! webhook receiver. Neither is used by `outboxd run`.

pub mod postgres;
pub mod receiver;
