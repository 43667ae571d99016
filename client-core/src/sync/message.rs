//! The CBOR messages of the automerge-repo sync protocol v1.
//!
//! Every frame (a WebSocket binary message, or one length-prefixed record on a QUIC stream) holds
//! one CBOR map with a `type` key, as `@automerge/automerge-repo` encodes it with cbor-x
//! (`useRecords: false`, `tagUint8Array: false`): keys are camelCase text, `data` is a byte
//! string, ids are text. The handshake messages (`join`, `peer`, `error`) are the ones of
//! `automerge-repo-network-websocket`; the rest are the repo messages of `network/messages.ts`.
//!
//! Decoding is written against [`ciborium::Value`] rather than derived, because JavaScript is
//! loose in ways serde derive is not: cbor-x writes any integer above 2³² (a millisecond
//! timestamp, say) as a float, an `undefined` property as CBOR `undefined`, and a message may
//! carry fields we do not know. Decoding never panics; anything else is a [`DecodeError`].

use std::collections::BTreeMap;
use std::fmt;

use ciborium::Value;

use super::docid::{DocumentId, DocumentIdError};

/// The only protocol version there is, and the one this crate speaks.
pub const PROTOCOL_V1: &str = "1";

/// The ephemeral id of a peer: one process, one browser tab. Free text chosen by the peer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PeerId(String);

/// The id of a peer's persistent storage. Several peers (tabs) may share one; sync states are
/// kept per storage id so that a reconnecting peer is not sent what it already has.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorageId(String);

macro_rules! string_id {
    ($name:ident) => {
        impl $name {
            /// Wraps the given text.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }
    };
}

string_id!(PeerId);
string_id!(StorageId);

/// What a peer says about itself in `join` and `peer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// The id of the peer's persistent storage, if it has one.
    pub storage_id: Option<StorageId>,
    /// True when the peer will not come back with this storage id, so keeping its sync state
    /// would be wasted.
    pub is_ephemeral: bool,
}

/// `join`: the first message of the initiating peer (the WebSocket client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinMessage {
    /// The initiating peer.
    pub sender_id: PeerId,
    /// Its metadata (empty when it sent none).
    pub peer_metadata: PeerMetadata,
    /// The protocol versions it speaks; `["1"]` today.
    pub supported_protocol_versions: Vec<String>,
    /// It does not offer documents whose heads equal the shared heads it persisted with the
    /// receiving peer, and asks to be told in [`PeerMessage::behind`] which of those the
    /// receiving peer has news for (`skipsInStep` on the wire; an extension of this project,
    /// which other peers ignore).
    pub skips_in_step: bool,
}

/// `peer`: the receiving peer's answer to `join`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMessage {
    /// The receiving peer.
    pub sender_id: PeerId,
    /// The initiating peer.
    pub target_id: PeerId,
    /// The receiving peer's metadata.
    pub peer_metadata: PeerMetadata,
    /// The version chosen for this connection; always `"1"`.
    pub selected_protocol_version: String,
    /// To a peer that skips documents in step ([`JoinMessage::skips_in_step`]): the documents
    /// of which it may lack something, each followed by a sync message; every other document
    /// it skipped is in step (`behind` on the wire; an extension of this project).
    pub behind: Option<Vec<DocumentId>>,
}

/// `error`: the sender met a protocol error and is closing the connection, or, when
/// `refused` is set, refused some changes and keeps the connection open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// What went wrong, for a human.
    pub message: String,
    /// The sender, when it had one yet (the JavaScript server always sends it).
    pub sender_id: Option<PeerId>,
    /// The recipient, when known.
    pub target_id: Option<PeerId>,
    /// The changes the sender refused (`documentId` and `refusedChanges` on the wire; peers
    /// that do not know these fields log the message and go on).
    pub refused: Option<RefusedChanges>,
}

/// Changes to one document that a peer refused to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedChanges {
    /// The document.
    pub document_id: DocumentId,
    /// Each refused change.
    pub changes: Vec<RefusedChange>,
}

/// One refused change and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedChange {
    /// The change hash, hex.
    pub hash: String,
    /// Why it was refused, for a human.
    pub reason: String,
}

/// `leave`: advisory, the sender is about to disconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveMessage {
    /// The leaving peer, if it said.
    pub sender_id: Option<PeerId>,
}

/// `sync` and `request`: one Automerge sync message about one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncMessage {
    /// The peer that generated `data`.
    pub sender_id: PeerId,
    /// The peer it is for.
    pub target_id: PeerId,
    /// The document the message is about.
    pub document_id: DocumentId,
    /// An encoded `automerge::sync::Message`.
    pub data: Vec<u8>,
}

/// `doc-unavailable`: the sender does not have the document (nor do its other peers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocUnavailableMessage {
    /// The peer without the document.
    pub sender_id: PeerId,
    /// The peer that asked for it.
    pub target_id: PeerId,
    /// The document.
    pub document_id: DocumentId,
}

/// `ephemeral`: application data about a document that is passed on, never stored (presence,
/// cursors). Relays forward it with the original `sender_id`; (`sender_id`, `session_id`,
/// `count`) identifies a message so that a mesh delivers it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EphemeralMessage {
    /// The peer that first sent the message (kept when relayed).
    pub sender_id: PeerId,
    /// The next hop.
    pub target_id: PeerId,
    /// Sequence number within the session.
    pub count: u64,
    /// Random per-process session id of the original sender.
    pub session_id: String,
    /// The document the data is about.
    pub document_id: DocumentId,
    /// The payload (CBOR in practice, opaque here).
    pub data: Vec<u8>,
}

/// The heads one storage id has of a document, in a `remote-heads-changed` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteHeads {
    /// The heads as automerge-repo writes them (base58check change hashes).
    pub heads: Vec<String>,
    /// Milliseconds since the Unix epoch on the node that first saw these heads.
    pub timestamp: u64,
}

/// `remote-heads-changed`: gossip about the heads of a document at other storage ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteHeadsChangedMessage {
    /// The gossiping peer.
    pub sender_id: PeerId,
    /// The recipient.
    pub target_id: PeerId,
    /// The document.
    pub document_id: DocumentId,
    /// Heads per storage id.
    pub new_heads: BTreeMap<StorageId, RemoteHeads>,
}

/// `remote-subscription-change`: the sender changes which storage ids' heads it wants gossip on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSubscriptionChangeMessage {
    /// The subscribing peer.
    pub sender_id: PeerId,
    /// The recipient.
    pub target_id: PeerId,
    /// Storage ids to add.
    pub add: Vec<StorageId>,
    /// Storage ids to remove.
    pub remove: Vec<StorageId>,
}

/// One message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `join`, see [`JoinMessage`].
    Join(JoinMessage),
    /// `peer`, see [`PeerMessage`].
    Peer(PeerMessage),
    /// `error`, see [`ErrorMessage`].
    Error(ErrorMessage),
    /// `leave`, see [`LeaveMessage`].
    Leave(LeaveMessage),
    /// `request`: a sync message from a peer that does not have the document and would like a
    /// `doc-unavailable` if the recipient does not either.
    Request(SyncMessage),
    /// `sync`, see [`SyncMessage`].
    Sync(SyncMessage),
    /// `doc-unavailable`, see [`DocUnavailableMessage`].
    DocUnavailable(DocUnavailableMessage),
    /// `ephemeral`, see [`EphemeralMessage`].
    Ephemeral(EphemeralMessage),
    /// `remote-heads-changed`, see [`RemoteHeadsChangedMessage`].
    RemoteHeadsChanged(RemoteHeadsChangedMessage),
    /// `remote-subscription-change`, see [`RemoteSubscriptionChangeMessage`].
    RemoteSubscriptionChange(RemoteSubscriptionChangeMessage),
}

/// Why bytes are not a protocol message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not one well-formed CBOR item.
    #[error("malformed CBOR")]
    Cbor(#[source] ciborium::de::Error<std::io::Error>),
    /// Bytes follow the CBOR item; a frame holds exactly one message.
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    /// The item is not a map.
    #[error("a message is a CBOR map")]
    NotAMap,
    /// A required field is absent (or `null`/`undefined`).
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    /// A field has the wrong CBOR type.
    #[error("field `{field}` should be {expected}")]
    WrongFieldType {
        /// The field.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// A number field is negative, fractional or too large for its range.
    #[error("field `{0}` is not a non-negative integer")]
    BadInteger(&'static str),
    /// The `type` is not one this crate knows. Peers ignore such messages rather than fail, so
    /// that newer peers can add types.
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// `documentId` is not a valid document id.
    #[error("bad documentId")]
    BadDocumentId(#[source] DocumentIdError),
}

impl Message {
    /// The `type` string of this message on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Join(_) => "join",
            Message::Peer(_) => "peer",
            Message::Error(_) => "error",
            Message::Leave(_) => "leave",
            Message::Request(_) => "request",
            Message::Sync(_) => "sync",
            Message::DocUnavailable(_) => "doc-unavailable",
            Message::Ephemeral(_) => "ephemeral",
            Message::RemoteHeadsChanged(_) => "remote-heads-changed",
            Message::RemoteSubscriptionChange(_) => "remote-subscription-change",
        }
    }

    /// The document this message is about, for the message types that have one.
    pub fn document_id(&self) -> Option<DocumentId> {
        match self {
            Message::Request(m) | Message::Sync(m) => Some(m.document_id),
            Message::DocUnavailable(m) => Some(m.document_id),
            Message::Ephemeral(m) => Some(m.document_id),
            Message::RemoteHeadsChanged(m) => Some(m.document_id),
            Message::Join(_)
            | Message::Peer(_)
            | Message::Error(_)
            | Message::Leave(_)
            | Message::RemoteSubscriptionChange(_) => None,
        }
    }

    /// Encodes the message as one CBOR map, as cbor-x would.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serializing a `Value` into a `Vec` has no failure path: the writer cannot fail and a
        // `Value` has no custom serializer that could.
        #[allow(clippy::expect_used)]
        ciborium::into_writer(&self.to_value(), &mut out)
            .expect("writing a CBOR value into a Vec cannot fail");
        out
    }

    /// Decodes one message from one frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut rest = bytes;
        let value: Value = ciborium::from_reader(&mut rest).map_err(DecodeError::Cbor)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Self::from_value(&value)
    }

    fn to_value(&self) -> Value {
        let mut map = MapBuilder::new(self.type_name());
        match self {
            Message::Join(m) => {
                map.text("senderId", m.sender_id.as_str());
                map.put("peerMetadata", metadata_to_value(&m.peer_metadata));
                map.put(
                    "supportedProtocolVersions",
                    Value::Array(
                        m.supported_protocol_versions
                            .iter()
                            .map(|v| Value::Text(v.clone()))
                            .collect(),
                    ),
                );
                if m.skips_in_step {
                    map.put("skipsInStep", Value::Bool(true));
                }
            }
            Message::Peer(m) => {
                map.text("senderId", m.sender_id.as_str());
                map.text("targetId", m.target_id.as_str());
                map.put("peerMetadata", metadata_to_value(&m.peer_metadata));
                map.text("selectedProtocolVersion", &m.selected_protocol_version);
                if let Some(behind) = &m.behind {
                    map.put(
                        "behind",
                        Value::Array(behind.iter().map(|d| Value::Text(d.to_string())).collect()),
                    );
                }
            }
            Message::Error(m) => {
                map.text("message", &m.message);
                if let Some(id) = &m.sender_id {
                    map.text("senderId", id.as_str());
                }
                if let Some(id) = &m.target_id {
                    map.text("targetId", id.as_str());
                }
                if let Some(refused) = &m.refused {
                    map.text("documentId", &refused.document_id.to_string());
                    map.put(
                        "refusedChanges",
                        Value::Array(
                            refused
                                .changes
                                .iter()
                                .map(|c| {
                                    Value::Map(vec![
                                        (Value::Text("hash".into()), Value::Text(c.hash.clone())),
                                        (
                                            Value::Text("reason".into()),
                                            Value::Text(c.reason.clone()),
                                        ),
                                    ])
                                })
                                .collect(),
                        ),
                    );
                }
            }
            Message::Leave(m) => {
                if let Some(id) = &m.sender_id {
                    map.text("senderId", id.as_str());
                }
            }
            Message::Request(m) | Message::Sync(m) => {
                map.ids(&m.sender_id, &m.target_id);
                map.text("documentId", &m.document_id.to_string());
                map.put("data", Value::Bytes(m.data.clone()));
            }
            Message::DocUnavailable(m) => {
                map.ids(&m.sender_id, &m.target_id);
                map.text("documentId", &m.document_id.to_string());
            }
            Message::Ephemeral(m) => {
                map.ids(&m.sender_id, &m.target_id);
                map.put("count", Value::Integer(m.count.into()));
                map.text("sessionId", &m.session_id);
                map.text("documentId", &m.document_id.to_string());
                map.put("data", Value::Bytes(m.data.clone()));
            }
            Message::RemoteHeadsChanged(m) => {
                map.ids(&m.sender_id, &m.target_id);
                map.text("documentId", &m.document_id.to_string());
                let heads = m
                    .new_heads
                    .iter()
                    .map(|(storage, heads)| {
                        let entry = Value::Map(vec![
                            (
                                Value::Text("heads".into()),
                                Value::Array(
                                    heads.heads.iter().map(|h| Value::Text(h.clone())).collect(),
                                ),
                            ),
                            (
                                Value::Text("timestamp".into()),
                                Value::Integer(heads.timestamp.into()),
                            ),
                        ]);
                        (Value::Text(storage.as_str().to_owned()), entry)
                    })
                    .collect();
                map.put("newHeads", Value::Map(heads));
            }
            Message::RemoteSubscriptionChange(m) => {
                map.ids(&m.sender_id, &m.target_id);
                map.put("add", storage_ids_to_value(&m.add));
                map.put("remove", storage_ids_to_value(&m.remove));
            }
        }
        Value::Map(map.0)
    }

    fn from_value(value: &Value) -> Result<Self, DecodeError> {
        let fields = Fields::new(value)?;
        let kind = fields.text("type")?;
        let message = match kind {
            "join" => Message::Join(JoinMessage {
                sender_id: fields.peer_id("senderId")?,
                // The protocol README calls it `metadata`, the code sends `peerMetadata`.
                peer_metadata: match fields.get("peerMetadata") {
                    Some(_) => fields.metadata("peerMetadata")?,
                    None => fields.metadata("metadata")?,
                },
                // The JavaScript server treats a missing list as "1".
                supported_protocol_versions: match fields.get("supportedProtocolVersions") {
                    Some(_) => fields.text_array("supportedProtocolVersions")?,
                    None => vec![PROTOCOL_V1.to_owned()],
                },
                skips_in_step: fields.opt_bool("skipsInStep")?.unwrap_or(false),
            }),
            "peer" => Message::Peer(PeerMessage {
                sender_id: fields.peer_id("senderId")?,
                target_id: fields.peer_id("targetId")?,
                peer_metadata: match fields.get("peerMetadata") {
                    Some(_) => fields.metadata("peerMetadata")?,
                    None => fields.metadata("metadata")?,
                },
                selected_protocol_version: fields.text("selectedProtocolVersion")?.to_owned(),
                behind: match fields.get("behind") {
                    Some(_) => Some(
                        fields
                            .text_array("behind")?
                            .iter()
                            .map(|id| id.parse().map_err(DecodeError::BadDocumentId))
                            .collect::<Result<_, _>>()?,
                    ),
                    None => None,
                },
            }),
            "error" => Message::Error(ErrorMessage {
                message: fields.opt_text("message")?.unwrap_or_default().to_owned(),
                sender_id: fields.opt_text("senderId")?.map(PeerId::from),
                target_id: fields.opt_text("targetId")?.map(PeerId::from),
                refused: fields.refused_changes()?,
            }),
            "leave" => Message::Leave(LeaveMessage {
                sender_id: fields.opt_text("senderId")?.map(PeerId::from),
            }),
            "request" => Message::Request(fields.sync_message()?),
            "sync" => Message::Sync(fields.sync_message()?),
            "doc-unavailable" => Message::DocUnavailable(DocUnavailableMessage {
                sender_id: fields.peer_id("senderId")?,
                target_id: fields.peer_id("targetId")?,
                document_id: fields.document_id()?,
            }),
            "ephemeral" => Message::Ephemeral(EphemeralMessage {
                sender_id: fields.peer_id("senderId")?,
                target_id: fields.peer_id("targetId")?,
                count: fields.uint("count")?,
                session_id: fields.text("sessionId")?.to_owned(),
                document_id: fields.document_id()?,
                data: fields.bytes("data")?.to_vec(),
            }),
            "remote-heads-changed" => Message::RemoteHeadsChanged(RemoteHeadsChangedMessage {
                sender_id: fields.peer_id("senderId")?,
                target_id: fields.peer_id("targetId")?,
                document_id: fields.document_id()?,
                new_heads: fields.new_heads()?,
            }),
            "remote-subscription-change" => {
                Message::RemoteSubscriptionChange(RemoteSubscriptionChangeMessage {
                    sender_id: fields.peer_id("senderId")?,
                    target_id: fields.peer_id("targetId")?,
                    add: fields.storage_ids("add")?,
                    remove: fields.storage_ids("remove")?,
                })
            }
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        };
        Ok(message)
    }
}

/// Builds the entries of a message map in a fixed order (`type` first, as JavaScript does).
struct MapBuilder(Vec<(Value, Value)>);

impl MapBuilder {
    fn new(kind: &str) -> Self {
        Self(vec![(Value::Text("type".into()), Value::Text(kind.into()))])
    }

    fn put(&mut self, key: &str, value: Value) {
        self.0.push((Value::Text(key.into()), value));
    }

    fn text(&mut self, key: &str, value: &str) {
        self.put(key, Value::Text(value.into()));
    }

    fn ids(&mut self, sender: &PeerId, target: &PeerId) {
        self.text("senderId", sender.as_str());
        self.text("targetId", target.as_str());
    }
}

fn metadata_to_value(meta: &PeerMetadata) -> Value {
    let mut entries = Vec::new();
    if let Some(id) = &meta.storage_id {
        entries.push((
            Value::Text("storageId".into()),
            Value::Text(id.as_str().to_owned()),
        ));
    }
    entries.push((
        Value::Text("isEphemeral".into()),
        Value::Bool(meta.is_ephemeral),
    ));
    Value::Map(entries)
}

fn storage_ids_to_value(ids: &[StorageId]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| Value::Text(id.as_str().to_owned()))
            .collect(),
    )
}

/// Typed, tolerant access to the entries of a CBOR map.
struct Fields<'a>(&'a [(Value, Value)]);

impl<'a> Fields<'a> {
    fn new(value: &'a Value) -> Result<Self, DecodeError> {
        match value {
            Value::Map(entries) => Ok(Self(entries)),
            _ => Err(DecodeError::NotAMap),
        }
    }

    /// The value under `key`. `null` (which is also how ciborium reads JavaScript's
    /// `undefined`) counts as absent, since cbor-x writes properties set to `undefined`.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    fn opt_text(&self, key: &'static str) -> Result<Option<&'a str>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Text(text)) => Ok(Some(text)),
            Some(_) => Err(wrong(key, "text")),
        }
    }

    fn text(&self, key: &'static str) -> Result<&'a str, DecodeError> {
        self.opt_text(key)?.ok_or(DecodeError::MissingField(key))
    }

    fn peer_id(&self, key: &'static str) -> Result<PeerId, DecodeError> {
        self.text(key).map(PeerId::from)
    }

    fn document_id(&self) -> Result<DocumentId, DecodeError> {
        self.text("documentId")?
            .parse()
            .map_err(DecodeError::BadDocumentId)
    }

    fn bytes(&self, key: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.get(key) {
            None => Err(DecodeError::MissingField(key)),
            Some(value) => as_bytes(value).ok_or(wrong(key, "a byte string")),
        }
    }

    fn uint(&self, key: &'static str) -> Result<u64, DecodeError> {
        match self.get(key) {
            None => Err(DecodeError::MissingField(key)),
            Some(value) => as_uint(value, key),
        }
    }

    fn opt_bool(&self, key: &'static str) -> Result<Option<bool>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong(key, "a boolean")),
        }
    }

    fn text_array(&self, key: &'static str) -> Result<Vec<String>, DecodeError> {
        match self.get(key) {
            None => Err(DecodeError::MissingField(key)),
            Some(value) => text_array(value, key),
        }
    }

    /// The refusal an `error` carries, if any: `documentId` with `refusedChanges`.
    fn refused_changes(&self) -> Result<Option<RefusedChanges>, DecodeError> {
        let Some(list) = self.get("refusedChanges") else {
            return Ok(None);
        };
        let Value::Array(items) = list else {
            return Err(wrong("refusedChanges", "an array of maps"));
        };
        let changes = items
            .iter()
            .map(|item| {
                let f =
                    Fields::new(item).map_err(|_| wrong("refusedChanges", "an array of maps"))?;
                Ok(RefusedChange {
                    hash: f.text("hash")?.to_owned(),
                    reason: f.opt_text("reason")?.unwrap_or_default().to_owned(),
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        Ok(Some(RefusedChanges {
            document_id: self.document_id()?,
            changes,
        }))
    }

    /// An optional list of storage ids; absent means empty.
    fn storage_ids(&self, key: &'static str) -> Result<Vec<StorageId>, DecodeError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(value) => Ok(text_array(value, key)?
                .into_iter()
                .map(StorageId::from)
                .collect()),
        }
    }

    /// Peer metadata under `key`; absent means empty metadata.
    fn metadata(&self, key: &'static str) -> Result<PeerMetadata, DecodeError> {
        let Some(value) = self.get(key) else {
            return Ok(PeerMetadata::default());
        };
        let Value::Map(entries) = value else {
            return Err(wrong(key, "a map"));
        };
        let meta = Fields(entries);
        Ok(PeerMetadata {
            storage_id: meta.opt_text("storageId")?.map(StorageId::from),
            is_ephemeral: meta.opt_bool("isEphemeral")?.unwrap_or(false),
        })
    }

    fn sync_message(&self) -> Result<SyncMessage, DecodeError> {
        Ok(SyncMessage {
            sender_id: self.peer_id("senderId")?,
            target_id: self.peer_id("targetId")?,
            document_id: self.document_id()?,
            data: self.bytes("data")?.to_vec(),
        })
    }

    fn new_heads(&self) -> Result<BTreeMap<StorageId, RemoteHeads>, DecodeError> {
        const KEY: &str = "newHeads";
        let Some(value) = self.get(KEY) else {
            return Err(DecodeError::MissingField(KEY));
        };
        let Value::Map(entries) = value else {
            return Err(wrong(KEY, "a map"));
        };
        let mut out = BTreeMap::new();
        for (storage, entry) in entries {
            let Value::Text(storage) = storage else {
                return Err(wrong(KEY, "a map keyed by storage id"));
            };
            let Value::Map(entry) = entry else {
                return Err(wrong(KEY, "a map of {heads, timestamp}"));
            };
            let entry = Fields(entry);
            out.insert(
                StorageId::from(storage.as_str()),
                RemoteHeads {
                    heads: entry.text_array("heads")?,
                    timestamp: entry.uint("timestamp")?,
                },
            );
        }
        Ok(out)
    }
}

fn wrong(field: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongFieldType { field, expected }
}

/// CBOR tag 64 marks a `Uint8Array` when cbor-x runs with its default `tagUint8Array: true`;
/// automerge-repo turns that off, but accepting it costs nothing.
const TAG_UINT8_ARRAY: u64 = 64;

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::Bytes(bytes) => Some(bytes),
        Value::Tag(TAG_UINT8_ARRAY, inner) => match inner.as_ref() {
            Value::Bytes(bytes) => Some(bytes),
            _ => None,
        },
        _ => None,
    }
}

/// The largest integer a JavaScript number (an f64) holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn as_uint(value: &Value, key: &'static str) -> Result<u64, DecodeError> {
    match value {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| DecodeError::BadInteger(key)),
        // cbor-x writes integers that do not fit in 32 bits as floats.
        Value::Float(f) if f.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER).contains(f) => {
            // In range and integral (NaN fails the range check), so the cast is exact.
            Ok(*f as u64)
        }
        Value::Float(_) => Err(DecodeError::BadInteger(key)),
        _ => Err(wrong(key, "an integer")),
    }
}

fn text_array(value: &Value, key: &'static str) -> Result<Vec<String>, DecodeError> {
    let Value::Array(items) = value else {
        return Err(wrong(key, "an array of text"));
    };
    items
        .iter()
        .map(|item| match item {
            Value::Text(text) => Ok(text.clone()),
            _ => Err(wrong(key, "an array of text")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc() -> DocumentId {
        DocumentId::from_bytes([7; 16])
    }

    fn samples() -> Vec<Message> {
        let alice = PeerId::from("alice");
        let relay = PeerId::from("relay");
        vec![
            Message::Join(JoinMessage {
                sender_id: alice.clone(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("store-a".into()),
                    is_ephemeral: false,
                },
                supported_protocol_versions: vec!["1".into()],
                skips_in_step: false,
            }),
            Message::Peer(PeerMessage {
                sender_id: relay.clone(),
                target_id: alice.clone(),
                peer_metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: true,
                },
                selected_protocol_version: "1".into(),
                behind: None,
            }),
            Message::Join(JoinMessage {
                sender_id: alice.clone(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("store-a".into()),
                    is_ephemeral: false,
                },
                supported_protocol_versions: vec!["1".into()],
                skips_in_step: true,
            }),
            Message::Peer(PeerMessage {
                sender_id: relay.clone(),
                target_id: alice.clone(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("store-r".into()),
                    is_ephemeral: false,
                },
                selected_protocol_version: "1".into(),
                behind: Some(vec![doc()]),
            }),
            Message::Error(ErrorMessage {
                message: "unsupported protocol version".into(),
                sender_id: Some(relay.clone()),
                target_id: None,
                refused: None,
            }),
            Message::Error(ErrorMessage {
                message: "change refused".into(),
                sender_id: Some(relay.clone()),
                target_id: Some(alice.clone()),
                refused: Some(RefusedChanges {
                    document_id: doc(),
                    changes: vec![RefusedChange {
                        hash: "ab".repeat(32),
                        reason: "not allowed".into(),
                    }],
                }),
            }),
            Message::Leave(LeaveMessage {
                sender_id: Some(alice.clone()),
            }),
            Message::Request(SyncMessage {
                sender_id: alice.clone(),
                target_id: relay.clone(),
                document_id: doc(),
                data: vec![0x42, 0, 0, 1],
            }),
            Message::Sync(SyncMessage {
                sender_id: relay.clone(),
                target_id: alice.clone(),
                document_id: doc(),
                data: vec![0x42; 300],
            }),
            Message::DocUnavailable(DocUnavailableMessage {
                sender_id: relay.clone(),
                target_id: alice.clone(),
                document_id: doc(),
            }),
            Message::Ephemeral(EphemeralMessage {
                sender_id: alice.clone(),
                target_id: relay.clone(),
                count: 12,
                session_id: "k3j2h1".into(),
                document_id: doc(),
                data: vec![0xa0],
            }),
            Message::RemoteHeadsChanged(RemoteHeadsChangedMessage {
                sender_id: relay.clone(),
                target_id: alice.clone(),
                document_id: doc(),
                new_heads: BTreeMap::from([(
                    StorageId::from("store-b"),
                    RemoteHeads {
                        heads: vec!["2NEpo7TZRRrLZSi2U".into()],
                        timestamp: 1_722_000_000_000,
                    },
                )]),
            }),
            Message::RemoteSubscriptionChange(RemoteSubscriptionChangeMessage {
                sender_id: alice,
                target_id: relay,
                add: vec!["store-b".into()],
                remove: vec![],
            }),
        ]
    }

    /// Encodes a CBOR value the way a test wants to see it on the wire.
    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).expect("writing to a Vec");
        out
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let bytes = message.encode();
            let decoded = Message::decode(&bytes).expect("decodes what it encoded");
            assert_eq!(decoded, message);
        }
    }

    #[test]
    fn encoding_uses_javascript_keys_and_byte_strings() {
        let sample = samples()
            .into_iter()
            .find(|m| matches!(m, Message::Sync(_)))
            .expect("a sync sample");
        let value: Value = ciborium::from_reader(sample.encode().as_slice()).expect("cbor");
        let fields = Fields::new(&value).expect("a map");
        assert_eq!(fields.text("type").ok(), Some("sync"));
        assert_eq!(
            fields.text("documentId").ok(),
            Some(doc().to_string().as_str())
        );
        assert!(matches!(fields.get("data"), Some(Value::Bytes(b)) if b.len() == 300));
    }

    #[test]
    fn tolerates_what_javascript_sends() {
        // A `join` as the WebSocket client adapter sends it with no storage: metadata holds an
        // `undefined` storage id; plus a field we do not know.
        let bytes = cbor(&Value::Map(vec![
            (text("type"), text("join")),
            (text("senderId"), text("tab-1")),
            (
                text("peerMetadata"),
                Value::Map(vec![(text("storageId"), Value::Null)]),
            ),
            (
                text("supportedProtocolVersions"),
                Value::Array(vec![text("1")]),
            ),
            (text("someFutureField"), Value::Integer(3.into())),
        ]));
        let Ok(Message::Join(join)) = Message::decode(&bytes) else {
            panic!("join should decode");
        };
        assert_eq!(join.peer_metadata, PeerMetadata::default());

        // CBOR `undefined` (0xf7) as a whole metadata value.
        let mut bytes = cbor(&Value::Map(vec![
            (text("type"), text("join")),
            (text("senderId"), text("tab-1")),
        ]));
        bytes[0] += 1; // one more map entry
        bytes.extend(cbor(&text("peerMetadata")));
        bytes.push(0xf7);
        assert!(matches!(Message::decode(&bytes), Ok(Message::Join(_))));

        // A timestamp beyond 2^32 and a count, both as floats; data tagged as a Uint8Array.
        let bytes = cbor(&Value::Map(vec![
            (text("type"), text("ephemeral")),
            (text("senderId"), text("a")),
            (text("targetId"), text("b")),
            (text("count"), Value::Float(5.0)),
            (text("sessionId"), text("s")),
            (text("documentId"), text(&doc().to_string())),
            (
                text("data"),
                Value::Tag(TAG_UINT8_ARRAY, Box::new(Value::Bytes(vec![1, 2]))),
            ),
        ]));
        let Ok(Message::Ephemeral(eph)) = Message::decode(&bytes) else {
            panic!("ephemeral should decode");
        };
        assert_eq!((eph.count, eph.data), (5, vec![1, 2]));

        let heads = Value::Map(vec![(
            text("store"),
            Value::Map(vec![
                (text("heads"), Value::Array(vec![])),
                (text("timestamp"), Value::Float(1_722_000_000_123.0)),
            ]),
        )]);
        let bytes = cbor(&Value::Map(vec![
            (text("type"), text("remote-heads-changed")),
            (text("senderId"), text("a")),
            (text("targetId"), text("b")),
            (text("documentId"), text(&doc().to_string())),
            (text("newHeads"), heads),
        ]));
        let Ok(Message::RemoteHeadsChanged(m)) = Message::decode(&bytes) else {
            panic!("remote-heads-changed should decode");
        };
        assert_eq!(
            m.new_heads[&StorageId::from("store")].timestamp,
            1_722_000_000_123
        );
    }

    #[test]
    fn malformed_messages_give_typed_errors() {
        let sync = |fields: Vec<(Value, Value)>| cbor(&Value::Map(fields));
        let base = || {
            vec![
                (text("type"), text("sync")),
                (text("senderId"), text("a")),
                (text("targetId"), text("b")),
                (text("documentId"), text(&doc().to_string())),
            ]
        };

        let mut no_data = base();
        assert!(matches!(
            Message::decode(&sync(no_data.clone())),
            Err(DecodeError::MissingField("data"))
        ));
        no_data.push((text("data"), text("not bytes")));
        assert!(matches!(
            Message::decode(&sync(no_data)),
            Err(DecodeError::WrongFieldType { field: "data", .. })
        ));

        let mut bad_doc = base();
        bad_doc[3].1 = text("not-a-doc-id");
        bad_doc.push((text("data"), Value::Bytes(vec![])));
        assert!(matches!(
            Message::decode(&sync(bad_doc)),
            Err(DecodeError::BadDocumentId(_))
        ));

        let mut unknown = base();
        unknown[0].1 = text("telepathy");
        assert!(matches!(
            Message::decode(&sync(unknown)),
            Err(DecodeError::UnknownType(t)) if t == "telepathy"
        ));

        let mut no_type = base();
        no_type.remove(0);
        assert!(matches!(
            Message::decode(&sync(no_type)),
            Err(DecodeError::MissingField("type"))
        ));

        let negative = cbor(&Value::Map(vec![
            (text("type"), text("ephemeral")),
            (text("count"), Value::Float(-1.0)),
            (text("senderId"), text("a")),
            (text("targetId"), text("b")),
        ]));
        assert!(matches!(
            Message::decode(&negative),
            Err(DecodeError::BadInteger("count"))
        ));

        assert!(matches!(
            Message::decode(&cbor(&Value::Array(vec![]))),
            Err(DecodeError::NotAMap)
        ));
        assert!(matches!(Message::decode(&[]), Err(DecodeError::Cbor(_))));
        assert!(matches!(
            Message::decode(&[0xbf]),
            Err(DecodeError::Cbor(_))
        ));
        let mut trailing = samples()[3].encode();
        trailing.push(0);
        assert!(matches!(
            Message::decode(&trailing),
            Err(DecodeError::TrailingBytes(1))
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_messages_never_panics(
            index in 0usize..10,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            // Random bytes rarely get past the CBOR layer; mutating real messages reaches the
            // field checks too.
            let mut bytes = samples()[index].encode();
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            let _ = Message::decode(&bytes);
        }
    }
}
