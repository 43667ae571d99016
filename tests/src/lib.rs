//! Support code shared by the end-to-end tests' and benchmarks' binaries.

pub mod bad_peer;
pub mod fixture;
pub mod linksim;
