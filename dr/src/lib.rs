//! Ballast disaster recovery: snapshot archives shipped to object storage.
//!
//! Not built yet (tracked as its own issue); the crate exists so the workspace has its final
//! shape and the dependency rules (`dr` depends on `protocol` only) hold from the start.

pub use ballast_protocol as protocol;
