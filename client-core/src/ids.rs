//! Identifiers made on the device, never by a server.
//!
//! Entities get UUIDv7 ids: unique without coordination and sortable by creation time, which
//! keeps listings stable across devices.

/// A new entity id (UUIDv7, hyphenated lowercase).
pub fn new_entity_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A new random 16-byte Automerge actor id for a device.
pub fn new_actor_id() -> automerge::ActorId {
    automerge::ActorId::from(*uuid::Uuid::new_v4().as_bytes())
}
