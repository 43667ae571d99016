//! Coalition Sync for phones and tablets: the client core behind a UniFFI API.
//!
//! Field teams and ministry staff use Android and iOS apps; this crate gives those apps the
//! whole client core without anyone writing Rust. It is built as a `cdylib` (Android's
//! `jniLibs`, and the JVM and Python tests here) and a `staticlib` (an iOS xcframework), and
//! its Kotlin, Swift and Python bindings are generated from the built library in library
//! mode by the workspace's pinned `uniffi-bindgen` (`mobile/generate.sh`).
//!
//! The API is one object, [`CoalitionClient`], opened at a store directory:
//! enrollment with an invite, the coalitions on the device, the consolidated report,
//! conflicts and history, typed edits for what field teams and ministry users change (land
//! release entries and their corrections, hazard areas, pledges, approvals, comments, the
//! narrative), and sync — once ([`CoalitionClient::sync_now`]) or in the background with a
//! [`SyncListener`] that hears about document changes and the sync status. Every failure
//! is one [`CoalitionError`].
//!
//! Nothing blocks the caller's thread: calls that touch the store or the network are
//! `async` (Kotlin `suspend`, Swift `async`, Python `async def`) and run on the library's
//! own tokio runtime and threads ([`sync`]). See `docs/mobile.md` for how an app includes
//! the library.

mod client;
mod error;
pub mod sync;
mod types;

pub use client::CoalitionClient;
pub use error::{CoalitionError, Result};
pub use sync::SyncListener;
pub use types::*;

uniffi::setup_scaffolding!();
