//! Coalition Sync relay.
//!
//! The relay is a peer of the automerge-repo sync protocol v1 that stores every coalition
//! document it is sent and forwards changes between the devices of a coalition. It also
//! enrolls devices (an invite becomes a long-lived credential), checks which documents each
//! device may sync, and serves the consolidated views of each coalition as JSON.
//!
//! - [`hub`]: one thread owning the sans-IO [`coalition_core::sync::SyncEngine`], the documents
//!   in memory and the store; it saves changes before sending anything that reflects them;
//! - [`ws`]: the WebSocket adapter at `/sync`; [`quic`]: the QUIC endpoint (quinn), its
//!   certificate and the pin invites carry;
//! - [`api`]: the router ([`api::app`]): enrollment, the `/api/v1` views, health and metrics;
//! - [`auth`]: `auth.db`, with invites, devices, credentials and actors;
//! - [`admin`]: creating coalitions, inviting, the demo set-up;
//! - [`server`]: [`server::Relay`], which starts all of it and shuts it down;
//! - [`dashboard`]: the coordinators' web page at `/` and the views it reads; [`events`]: live
//!   updates as server-sent events;
//! - [`error`], [`metrics`], [`state`]: the HTTP error type, the counters, the shared state.

pub mod admin;
pub mod api;
pub mod auth;
pub mod authors;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod quarantine;
pub mod quic;
pub mod screen;
pub mod server;
pub mod state;
pub mod ws;

pub use api::app;
pub use error::AppError;
pub use server::{Relay, RelayConfig};
pub use state::AppState;
