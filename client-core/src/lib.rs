//! Coalition Sync client core.
//!
//! A country coalition under the Convention on Cluster Munitions is kept as a set of Automerge
//! documents split along ownership lines (manifest, plan, one per partner organisation, one per
//! operator, comments). This crate holds the model on those documents, the hard validation
//! rules, the consolidated views and reports, the local SQLite store, the sans-IO sync engine,
//! the device's transport to the relay (enrollment, WebSocket sync) and the `coalition`
//! command-line client.

pub mod access;
pub mod check;
pub mod coalition;
pub mod demo;
pub mod error;
pub mod export;
#[cfg(test)]
mod fixture;
pub mod geo;
pub mod ids;
pub mod model;
pub mod refdata;
pub mod report;
pub mod resolve;
pub mod store;
pub mod sync;
pub mod transport;
pub mod validate;

pub use coalition::{Coalition, Committed, Edit, Identity};
pub use error::EditError;
