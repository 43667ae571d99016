//! Sync with other peers over the automerge-repo sync protocol v1.
//!
//! The protocol is the one of `@automerge/automerge-repo` 2.x and its WebSocket adapter, so a
//! stock JavaScript repo (a web app, a tablet's browser) can sync with our relay and our relay
//! with it. Three layers, none of which does I/O:
//!
//! - [`docid`]: [`DocumentId`], the bs58check id of every document, and `automerge:` URLs;
//! - [`message`]: the CBOR messages ([`Message`]) and their tolerant decoding;
//! - [`engine`]: [`SyncEngine`], the state machine that runs the handshake and one Automerge
//!   sync state per peer and document, taking messages and time in and giving messages and
//!   storage writes out ([`Action`]). Transports (WebSocket, QUIC) only move frames.
//!
//! [`receive_sync_message`] and [`generate_sync_message`] are the engine's ways of applying and
//! making Automerge sync messages, for peers that hold their own sync states.

pub mod docid;
pub mod engine;
mod forward;
pub mod message;

pub use docid::{DocumentId, DocumentIdError};
pub use engine::{
    generate_sync_message, Action, ConnId, DisconnectReason, DocumentSource, EngineConfig,
    EngineCounters, EngineError, Listing, SyncEngine,
};
pub use forward::{changes_in, receive_sync_message};
pub use message::{
    DecodeError, Message, PeerId, PeerMetadata, RefusedChange, RefusedChanges, StorageId,
};
