//! A sync session: the [`SyncEngine`] tied to the local [`Store`], for one connection to the
//! relay.
//!
//! The session decides what to sync — every document of the device's coalitions: each
//! coalition's manifest, and every document the manifest lists, which it learns as the
//! manifest arrives or changes — and carries out the engine's actions in order:
//! [`Action::DocumentChanged`] saves the document through [`Store::save_docs`] before the
//! sync state is persisted and before any frame that acknowledges the change leaves (frames
//! wait in an outbox until the batch that produced them has been carried out). A document
//! that cannot be saved ends the session with an error and nothing more is sent: the relay
//! keeps the change and sends it again next time.
//!
//! The session does no network I/O: the transport hands it frames ([`Session::receive`]) and
//! takes frames out ([`Session::poll_transmit`]). It does do store I/O, synchronously: a
//! change is only acknowledged once it is durable, so there is nothing useful to do while a
//! write is in flight.
//!
//! It also keeps, per document, the heads the relay last reported. When they equal the local
//! heads, every local change is on the relay; [`Session::checkpoint`] records that in
//! `synced_heads:<doc>` for `coalition status`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use automerge::{AutoCommit, ChangeHash};

use super::keys;
use crate::coalition::{describe, read_collection, CommitInfo};
use crate::error::EditError;
use crate::model::{keys as model_keys, DocEntry, DocKind};
use crate::store::{DocRecord, HeldStatus, NewHeld, Store, StoreError};
use crate::sync::{
    Action, ConnId, DisconnectReason, DocumentId, DocumentSource, EngineConfig, Message, PeerId,
    PeerMetadata, RefusedChange, StorageId, SyncEngine,
};

/// Why a session stopped. Local data is as it was before the batch that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store could not be read or written; the change was not acknowledged.
    #[error("the local store failed; nothing more was acknowledged to the relay")]
    Store(#[from] StoreError),
    /// Rebuilding a document without the changes the relay refused failed; the document was
    /// left as it was.
    #[error("cannot take refused changes out of document {doc_id}")]
    Rebuild {
        /// The document.
        doc_id: DocumentId,
        /// The cause.
        #[source]
        source: automerge::AutomergeError,
    },
    /// A document from the relay does not say which coalition it belongs to, so it cannot be
    /// stored; it was not acknowledged.
    #[error("document {doc_id} from the relay is not a coalition document; it was not stored")]
    NotACoalitionDocument {
        /// The document.
        doc_id: DocumentId,
        /// Why it could not be read.
        #[source]
        source: EditError,
    },
}

/// Something the user may want to see, produced while a session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The handshake with the relay is done.
    Connected {
        /// The relay's peer id.
        peer_id: PeerId,
    },
    /// Changes from the relay were applied and stored.
    RemoteChange {
        /// The document.
        doc_id: DocumentId,
        /// What it holds, if it says.
        kind: Option<DocKind>,
        /// Its owner organisation, if any.
        owner: Option<String>,
        /// How many changes arrived.
        changes: usize,
        /// Who made them (`user (org)`), in order of first appearance.
        authors: Vec<String>,
    },
    /// Edits made on this device (by another process) were picked up and offered to the relay.
    LocalChange {
        /// The document.
        doc_id: DocumentId,
    },
    /// The relay does not have this document, or will not give it to this device.
    Unavailable {
        /// The document.
        doc_id: DocumentId,
    },
    /// The engine closed the connection.
    Closed {
        /// Why.
        reason: DisconnectReason,
    },
    /// The relay refused changes of this device: they were taken out of the document and
    /// kept aside (see `coalition status`); the document is back to what the relay accepts.
    Refused {
        /// The document.
        doc_id: DocumentId,
        /// How many changes were set aside (the refused ones and those built on them).
        changes: usize,
        /// The relay's reasons, one per refused change it named.
        reasons: Vec<String>,
    },
    /// Something went wrong without ending the session (a malformed frame, a sync state that
    /// could not be saved).
    Warning {
        /// What happened.
        message: String,
    },
}

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStats {
    /// Bytes of frames sent.
    pub bytes_sent: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Documents that received changes from the relay.
    pub received: BTreeSet<DocumentId>,
    /// Documents the relay does not have or would not give.
    pub unavailable: BTreeSet<DocumentId>,
    /// Problems that did not end the session.
    pub warnings: Vec<String>,
    /// The relay closed the connection with this `error` message.
    pub remote_error: Option<String>,
    /// Changes the relay refused, set aside in this session (hash and reason).
    pub refused: Vec<(String, String)>,
}

/// One document the session syncs.
struct LocalDoc {
    doc: AutoCommit,
    /// The coalition it was synced for (the document itself says, once it has content).
    coalition: DocumentId,
    kind: Option<DocKind>,
    owner: Option<String>,
}

/// The session's documents and the store, as the engine sees them.
struct Local<'s> {
    store: &'s mut Store,
    docs: BTreeMap<DocumentId, LocalDoc>,
    /// Sync states that could not be read; reported once the engine call returns.
    warnings: Vec<String>,
}

impl DocumentSource for Local<'_> {
    fn get_mut(&mut self, doc_id: &DocumentId) -> Option<&mut AutoCommit> {
        self.docs.get_mut(doc_id).map(|d| &mut d.doc)
    }

    fn load_sync_state(&mut self, doc_id: &DocumentId, peer: &StorageId) -> Option<Vec<u8>> {
        match self.store.sync_state(doc_id, peer.as_str()) {
            Ok(state) => state,
            Err(e) => {
                // Without it the engine starts from a fresh state: more bytes, same result.
                self.warnings
                    .push(format!("cannot read the sync state of {doc_id}: {e}"));
                None
            }
        }
    }
}

/// The engine, the store and the documents of one connection to the relay. See the
/// [module documentation](self).
pub struct Session<'s> {
    local: Local<'s>,
    engine: SyncEngine,
    conn: ConnId,
    coalitions: Vec<DocumentId>,
    ready: bool,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
    /// Documents offered to or asked of the relay.
    shared: BTreeSet<DocumentId>,
    /// Documents the relay has said something about.
    answered: BTreeSet<DocumentId>,
    /// Per document, our heads when we last sent changes of it, until the relay answers with
    /// heads that hold them (a message it made before they arrived is no answer).
    awaiting: BTreeMap<DocumentId, Vec<ChangeHash>>,
    /// The heads the relay reported last, per document.
    relay_heads: BTreeMap<DocumentId, Vec<ChangeHash>>,
    /// What `synced_heads:<doc>` holds, to write it only when it changes.
    recorded: BTreeMap<DocumentId, String>,
    stats: SyncStats,
}

impl<'s> Session<'s> {
    /// A session for the given coalitions: loads their documents from the store, and plans to
    /// ask the relay for each manifest and listed document this device does not have yet.
    /// Reads the store, writes nothing.
    pub fn new(
        store: &'s mut Store,
        config: EngineConfig,
        coalitions: &[DocumentId],
    ) -> Result<Self, SessionError> {
        let mut session = Session {
            local: Local {
                store,
                docs: BTreeMap::new(),
                warnings: Vec::new(),
            },
            engine: SyncEngine::new(config),
            conn: ConnId(0),
            coalitions: coalitions.to_vec(),
            ready: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            shared: BTreeSet::new(),
            answered: BTreeSet::new(),
            awaiting: BTreeMap::new(),
            relay_heads: BTreeMap::new(),
            recorded: BTreeMap::new(),
            stats: SyncStats::default(),
        };
        for coalition in coalitions {
            session.load_coalition(*coalition)?;
        }
        for coalition in coalitions {
            session.add_listed(*coalition)?;
        }
        let ids: Vec<DocumentId> = session.local.docs.keys().copied().collect();
        for id in ids {
            session.share(id)?;
        }
        for id in session.local.docs.keys() {
            let key = format!("{}{id}", keys::SYNCED_HEADS_PREFIX);
            if let Some(text) = session.local.store.meta(&key)? {
                session.recorded.insert(*id, text);
            }
        }
        Ok(session)
    }

    /// Loads every stored document of a coalition (an empty manifest if there is none).
    fn load_coalition(&mut self, coalition: DocumentId) -> Result<(), SessionError> {
        // `load_doc` (unlike `load_docs`) tells the store what it holds of each document, so
        // that saving a received change writes only that change.
        let stored = self.local.store.doc_ids(&coalition)?;
        for id in stored {
            self.load_one(id, coalition)?;
        }
        // A device that has nothing of the coalition yet asks the relay for its manifest, and
        // for the documents the relay listed at enrollment: all in the first flight.
        if let Entry::Vacant(slot) = self.local.docs.entry(coalition) {
            slot.insert(LocalDoc {
                doc: AutoCommit::new(),
                coalition,
                kind: Some(DocKind::Manifest),
                owner: None,
            });
            for known in self.known_documents(coalition)? {
                let Ok(id) = DocumentId::parse_id_or_url(&known.id) else {
                    self.warn(format!(
                        "enrollment listed `{}`, not a document id",
                        known.id
                    ));
                    continue;
                };
                self.local.docs.entry(id).or_insert_with(|| LocalDoc {
                    doc: AutoCommit::new(),
                    coalition,
                    kind: Some(known.kind),
                    owner: known.owner,
                });
            }
        }
        Ok(())
    }

    /// The documents of `coalition` the relay listed at enrollment (see
    /// [`super::enroll::KnownDocument`]).
    fn known_documents(
        &mut self,
        coalition: DocumentId,
    ) -> Result<Vec<super::enroll::KnownDocument>, SessionError> {
        let Some(text) = self.local.store.meta(keys::KNOWN_DOCUMENTS)? else {
            return Ok(Vec::new());
        };
        match serde_json::from_str::<Vec<super::enroll::KnownDocument>>(&text) {
            Ok(list) => Ok(list
                .into_iter()
                .filter(|d| d.coalition == coalition.to_string())
                .collect()),
            Err(e) => {
                // The manifest lists them too, a round trip later.
                self.warn(format!(
                    "the documents listed at enrollment are unreadable: {e}"
                ));
                Ok(Vec::new())
            }
        }
    }

    /// Loads one document from the store if it is there. Returns whether it was.
    fn load_one(&mut self, id: DocumentId, coalition: DocumentId) -> Result<bool, SessionError> {
        match self.local.store.load_doc(&id)? {
            Some(stored) => {
                self.local.docs.insert(
                    id,
                    LocalDoc {
                        doc: stored.doc,
                        coalition,
                        kind: Some(stored.kind),
                        owner: stored.owner,
                    },
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Adds the documents a coalition's manifest lists that the session does not hold yet:
    /// from the store if they are there, else empty (the engine then asks the relay).
    /// Returns the ids added.
    fn add_listed(&mut self, coalition: DocumentId) -> Result<Vec<DocumentId>, SessionError> {
        let Some(manifest) = self.local.docs.get(&coalition) else {
            return Ok(Vec::new());
        };
        let listed: BTreeMap<String, DocEntry> =
            match read_collection(&manifest.doc, model_keys::DOCUMENTS) {
                Ok(listed) => listed,
                Err(e) => {
                    self.warn(format!(
                        "the document list of coalition {coalition} is unreadable: {e}"
                    ));
                    return Ok(Vec::new());
                }
            };
        let mut added = Vec::new();
        for (id, entry) in listed {
            let Ok(id) = DocumentId::parse_id_or_url(&id) else {
                self.warn(format!(
                    "coalition {coalition} lists `{id}`, not a document id"
                ));
                continue;
            };
            if self.local.docs.contains_key(&id) {
                continue;
            }
            if !self.load_one(id, coalition)? {
                self.local.docs.insert(
                    id,
                    LocalDoc {
                        doc: AutoCommit::new(),
                        coalition,
                        kind: Some(entry.kind),
                        owner: entry.owner,
                    },
                );
            }
            added.push(id);
        }
        Ok(added)
    }

    fn share(&mut self, id: DocumentId) -> Result<(), SessionError> {
        self.shared.insert(id);
        let actions = self.engine.share_doc(id, &mut self.local);
        self.carry_out(actions)
    }

    /// The transport connected: starts the handshake (`join`). Use a new session per
    /// connection.
    ///
    /// When the device has met the relay before, its documents are offered in the same flight
    /// as the `join` (see [`SyncEngine::connect_expecting`]): a device that comes back with an
    /// edit sends it at once, and its sync takes one round trip instead of two.
    pub fn connect(&mut self, now: Instant) -> Result<(), SessionError> {
        let actions = match self.known_relay()? {
            Some((peer_id, metadata)) => {
                // Until a relay is known not to list them, documents in step are left out.
                let skip =
                    self.local.store.meta(keys::SERVER_LISTS_BEHIND)?.as_deref() != Some("0");
                self.engine.connect_expecting(
                    self.conn,
                    now,
                    peer_id,
                    metadata,
                    skip,
                    &mut self.local,
                )
            }
            None => self.engine.connect(self.conn, now),
        };
        self.carry_out(actions)
    }

    /// The relay's peer id and storage as the device last saw them (at enrollment or the last
    /// handshake).
    fn known_relay(&self) -> Result<Option<(PeerId, PeerMetadata)>, SessionError> {
        let store = &self.local.store;
        let peer = store.meta(keys::SERVER_PEER_ID)?.filter(|p| !p.is_empty());
        let storage = store
            .meta(keys::SERVER_STORAGE_ID)?
            .filter(|s| !s.is_empty());
        Ok(peer.zip(storage).map(|(peer, storage)| {
            (
                PeerId::new(peer),
                PeerMetadata {
                    storage_id: Some(StorageId::new(storage)),
                    is_ephemeral: false,
                },
            )
        }))
    }

    /// Remembers who the relay said it is, for [`Self::known_relay`] next time, and whether
    /// it lists the documents a device is behind on.
    fn remember_relay(
        &mut self,
        peer_id: &PeerId,
        metadata: &PeerMetadata,
        lists_behind: Option<bool>,
    ) -> Result<(), SessionError> {
        let Some(storage) = metadata
            .storage_id
            .as_ref()
            .filter(|_| !metadata.is_ephemeral)
        else {
            return Ok(());
        };
        let store = &self.local.store;
        let lists = match lists_behind {
            Some(true) => Some("1"),
            Some(false) => Some("0"),
            None => None,
        };
        let remembered = [
            (keys::SERVER_PEER_ID, Some(peer_id.as_str())),
            (keys::SERVER_STORAGE_ID, Some(storage.as_str())),
            (keys::SERVER_LISTS_BEHIND, lists),
        ];
        for (key, value) in remembered {
            let Some(value) = value else { continue };
            if store.meta(key)?.as_deref() != Some(value) {
                store.set_meta(key, value)?;
            }
        }
        Ok(())
    }

    /// A frame arrived from the relay.
    pub fn receive(&mut self, frame: &[u8], now: Instant) -> Result<(), SessionError> {
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame.len() as u64;
        let actions = match Message::decode(frame) {
            Ok(message) => {
                self.note_incoming(&message);
                let before = message.document_id().and_then(|id| {
                    self.local
                        .docs
                        .get_mut(&id)
                        .map(|d| (id, d.doc.get_heads()))
                });
                let id = message.document_id();
                let actions = self
                    .engine
                    .receive(self.conn, message, now, &mut self.local);
                self.carry_out_with(actions, before)?;
                if let Some(id) = id {
                    self.settle_awaiting(id);
                }
                return Ok(());
            }
            // The engine answers a bad frame (an `error`, then closing); let it decode again.
            Err(_) => self
                .engine
                .receive_bytes(self.conn, frame, now, &mut self.local),
        };
        self.carry_out(actions)
    }

    /// Records what a relay message says about a document: that the relay answered, and its
    /// heads.
    ///
    /// A piece of a catch-up split into several messages (changes, but neither `have` nor
    /// `need`, which automerge always sends one of otherwise) is not an answer: the rest is on
    /// its way, and on a thin link the next piece can take longer than the quiet time that
    /// ends a sync. The document counts as answered again with the last piece.
    fn note_incoming(&mut self, message: &Message) {
        let Some(id) = message.document_id() else {
            return;
        };
        let mut piece = false;
        if let Message::Sync(m) | Message::Request(m) = message {
            if let Ok(decoded) = automerge::sync::Message::decode(&m.data) {
                piece = !decoded.changes.is_empty()
                    && decoded.have.is_empty()
                    && decoded.need.is_empty();
                let mut heads = decoded.heads;
                heads.sort();
                self.relay_heads.insert(id, heads);
            }
        }
        if piece {
            self.answered.remove(&id);
        } else {
            self.answered.insert(id);
        }
    }

    /// After a relay message about a document whose changes we sent: it answers them when the
    /// relay's heads hold every head we had when sending, or equal ours now (it sent what it
    /// built on them). Otherwise the relay made it before our changes arrived: still waiting.
    fn settle_awaiting(&mut self, id: DocumentId) {
        let Some(sent) = self.awaiting.get(&id) else {
            return;
        };
        let Some(relay) = self.relay_heads.get(&id) else {
            return;
        };
        let holds = sent.iter().all(|h| relay.contains(h));
        let equal = self.local.docs.get_mut(&id).is_some_and(|d| {
            let mut heads = d.doc.get_heads();
            heads.sort();
            heads == *relay
        });
        if holds || equal {
            self.awaiting.remove(&id);
            self.answered.insert(id);
        } else {
            self.answered.remove(&id);
        }
    }

    /// The transport closed.
    pub fn disconnected(&mut self) -> Result<(), SessionError> {
        self.ready = false;
        let actions = self.engine.peer_disconnected(self.conn, &mut self.local);
        self.carry_out(actions)
    }

    /// Time passed; call at [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        let actions = self.engine.handle_timeout(now);
        self.carry_out(actions)
    }

    /// When [`Self::handle_timeout`] should next be called (the handshake deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    /// The next frame to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frame = self.outbox.pop_front()?;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += frame.len() as u64;
        Some(frame)
    }

    /// A frame taken with [`Self::poll_transmit`] that will not be sent after all (the sync
    /// stopped at its byte budget, or the link went first): it no longer counts as sent.
    pub fn not_sent(&mut self, frame: &[u8]) {
        self.stats.frames_sent = self.stats.frames_sent.saturating_sub(1);
        self.stats.bytes_sent = self.stats.bytes_sent.saturating_sub(frame.len() as u64);
    }

    /// The next event for the user.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Whether the handshake is done and the connection is open.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether the relay has answered about every document the session shares.
    pub fn all_answered(&self) -> bool {
        self.ready && self.shared.is_subset(&self.answered)
    }

    /// Documents shared with the relay that it has not answered about yet.
    pub fn unanswered(&self) -> Vec<DocumentId> {
        self.shared.difference(&self.answered).copied().collect()
    }

    /// Documents this session syncs.
    pub fn documents(&self) -> usize {
        self.local.docs.len()
    }

    /// Documents whose local heads differ from those the relay last reported: local changes
    /// not known to be on the relay (or, while syncing, remote ones not yet here).
    pub fn unsent(&mut self) -> Vec<DocumentId> {
        let mut out = Vec::new();
        for (id, d) in self.local.docs.iter_mut() {
            let mut heads = d.doc.get_heads();
            if heads.is_empty() {
                continue;
            }
            heads.sort();
            if self.relay_heads.get(id) != Some(&heads) {
                out.push(*id);
            }
        }
        out
    }

    /// The counters so far.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Records, for each document whose heads the relay reported equal to ours, that its local
    /// changes are on the relay (`synced_heads:<doc>`), and the time of this sync. Call when
    /// the exchange is quiet.
    pub fn checkpoint(&mut self) -> Result<(), SessionError> {
        let mut updates = Vec::new();
        for (id, d) in self.local.docs.iter_mut() {
            let mut heads = d.doc.get_heads();
            heads.sort();
            if heads.is_empty() || self.relay_heads.get(id) != Some(&heads) {
                continue;
            }
            let text = super::heads_text(&heads);
            if self.recorded.get(id) != Some(&text) {
                updates.push((*id, text));
            }
        }
        for (id, text) in updates {
            self.local
                .store
                .set_meta(&format!("{}{id}", keys::SYNCED_HEADS_PREFIX), &text)?;
            self.recorded.insert(id, text);
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.local.store.set_meta(keys::LAST_SYNC, &now)?;
        Ok(())
    }

    /// New bytes of a document written to the store by another process (see
    /// [`super::watcher`]): merges them and offers what is new to the relay. A document the
    /// session does not hold yet is loaded whole if it belongs to one of its coalitions.
    pub fn merge_from_store(
        &mut self,
        doc_id: DocumentId,
        coalition: &str,
        bytes: &[u8],
    ) -> Result<(), SessionError> {
        let Some(local) = self.local.docs.get_mut(&doc_id) else {
            let Some(coalition) = self
                .coalitions
                .iter()
                .copied()
                .find(|c| c.to_string() == coalition)
            else {
                return Ok(());
            };
            if self.load_one(doc_id, coalition)? {
                self.share(doc_id)?;
                self.events.push_back(SessionEvent::LocalChange { doc_id });
            }
            return Ok(());
        };
        let before = local.doc.get_heads();
        // Chunks are whole snapshots or change runs; applying ones we already hold (our own
        // saves) changes nothing. Changes written by others are then saved again by us with
        // the next received change of the document: a few duplicate bytes, never a loss.
        if let Err(e) = local.doc.load_incremental(bytes) {
            self.warn(format!("cannot read new local changes of {doc_id}: {e}"));
            return Ok(());
        }
        if local.doc.get_heads() == before {
            return Ok(());
        }
        let is_manifest = local.kind == Some(DocKind::Manifest);
        let coalition = local.coalition;
        self.events.push_back(SessionEvent::LocalChange { doc_id });
        let actions = self.engine.local_change(doc_id, &mut self.local);
        self.carry_out(actions)?;
        if is_manifest {
            for id in self.add_listed(coalition)? {
                self.share(id)?;
            }
        }
        Ok(())
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.stats.warnings.push(message.clone());
        self.events.push_back(SessionEvent::Warning { message });
    }

    fn carry_out(&mut self, actions: Vec<Action>) -> Result<(), SessionError> {
        self.carry_out_with(actions, None)
    }

    /// Carries out the engine's actions in order. `before` is the heads of the document the
    /// message was about, to tell which changes are new.
    fn carry_out_with(
        &mut self,
        actions: Vec<Action>,
        before: Option<(DocumentId, Vec<ChangeHash>)>,
    ) -> Result<(), SessionError> {
        for message in std::mem::take(&mut self.local.warnings) {
            self.warn(message);
        }
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            match action {
                Action::Send { message, .. } => {
                    if let Some((id, heads)) = carries_changes(&message) {
                        // The relay answers changes with its new heads: until then they are
                        // not known to be there, and the sync is not over.
                        self.answered.remove(&id);
                        self.awaiting.insert(id, heads);
                    }
                    self.outbox.push_back(message.encode());
                }
                Action::Disconnect { reason, .. } => {
                    self.ready = false;
                    if let DisconnectReason::RemoteError(text) = &reason {
                        self.stats.remote_error = Some(text.clone());
                    }
                    self.events.push_back(SessionEvent::Closed { reason });
                }
                Action::PeerConnected {
                    peer_id,
                    metadata,
                    lists_behind,
                    ..
                } => {
                    self.ready = true;
                    self.remember_relay(&peer_id, &metadata, lists_behind)?;
                    self.events.push_back(SessionEvent::Connected { peer_id });
                }
                Action::InStep { docs, .. } => {
                    // The relay holds what we hold of these, and nothing newer.
                    for id in docs {
                        if let Some(d) = self.local.docs.get_mut(&id) {
                            let mut heads = d.doc.get_heads();
                            heads.sort();
                            self.relay_heads.insert(id, heads);
                            self.answered.insert(id);
                        }
                    }
                }
                Action::ListBehind { conn, .. } => {
                    // Only a relay is asked to list; a device cannot tell.
                    todo.extend(self.engine.answer_join(conn, None, &mut self.local));
                }
                Action::DocumentChanged { doc_id } => {
                    let since = match &before {
                        Some((id, heads)) if *id == doc_id => heads.clone(),
                        _ => Vec::new(),
                    };
                    self.save_received(doc_id, &since)?;
                    if self.local.docs.get(&doc_id).and_then(|d| d.kind) == Some(DocKind::Manifest)
                    {
                        // Documents the manifest now lists are shared after the actions
                        // already queued: the acknowledgement of the manifest goes first.
                        let coalition = self.local.docs.get(&doc_id).map(|d| d.coalition);
                        if let Some(coalition) = coalition {
                            for id in self.add_listed(coalition)? {
                                self.shared.insert(id);
                                todo.extend(self.engine.share_doc(id, &mut self.local));
                            }
                        }
                    }
                }
                Action::PersistSyncState {
                    doc_id,
                    peer_storage_id,
                    bytes,
                } => {
                    if let Err(e) =
                        self.local
                            .store
                            .put_sync_state(&doc_id, peer_storage_id.as_str(), &bytes)
                    {
                        // The document itself is saved; a lost sync state only costs bytes
                        // on the next connection.
                        self.warn(format!("cannot save the sync state of {doc_id}: {e}"));
                    }
                }
                Action::DocumentRequested { doc_id, .. } => {
                    // The relay only answers what we share, so this is a document we did not
                    // ask about. We keep only documents of our coalitions, which we share.
                    todo.extend(self.engine.doc_unavailable(doc_id));
                }
                Action::DocumentUnavailable { doc_id } => {
                    self.answered.insert(doc_id);
                    self.stats.unavailable.insert(doc_id);
                    self.events.push_back(SessionEvent::Unavailable { doc_id });
                }
                Action::Ephemeral { .. } => {}
                Action::ChangesRefused {
                    doc_id, changes, ..
                } => {
                    // The refusal is the relay's answer about them.
                    self.answered.insert(doc_id);
                    self.awaiting.remove(&doc_id);
                    todo.extend(self.set_aside(doc_id, &changes)?);
                }
                Action::Error { error, .. } => {
                    self.warn(format!("sync: {}", error_chain(&error)));
                }
            }
        }
        for message in std::mem::take(&mut self.local.warnings) {
            self.warn(message);
        }
        Ok(())
    }

    /// The relay refused some of this device's changes to a document: takes them, and every
    /// local change built on them, out of the document, keeps them aside in the store (one
    /// transaction with the rewritten document), and syncs the document again from a fresh
    /// state. Nothing is lost: `coalition status` lists what was set aside.
    fn set_aside(
        &mut self,
        doc_id: DocumentId,
        refused: &[RefusedChange],
    ) -> Result<Vec<Action>, SessionError> {
        let Some(local) = self.local.docs.get_mut(&doc_id) else {
            return Ok(Vec::new());
        };
        let named: BTreeMap<ChangeHash, &str> = refused
            .iter()
            .filter_map(|c| Some((c.hash.parse().ok()?, c.reason.as_str())))
            .collect();
        let all = local.doc.get_changes(&[]);
        let mut out: BTreeMap<ChangeHash, String> = BTreeMap::new();
        let mut kept = Vec::with_capacity(all.len());
        // `get_changes` lists changes in causal order, so a change's dependencies are judged
        // before it.
        for change in all {
            let hash = change.hash();
            if let Some(reason) = named.get(&hash) {
                out.insert(hash, (*reason).to_string());
            } else if let Some(dep) = change.deps().iter().find(|d| out.contains_key(d)) {
                out.insert(
                    hash,
                    format!("it depends on change {dep}, which was refused"),
                );
            } else {
                kept.push(change);
                continue;
            }
        }
        if out.is_empty() {
            // Nothing we hold: a change relayed for someone else, or already set aside.
            return Ok(Vec::new());
        }
        let mut rebuilt = AutoCommit::new().with_actor(local.doc.get_actor().clone());
        rebuilt
            .apply_changes(kept)
            .map_err(|source| SessionError::Rebuild { doc_id, source })?;
        let (kind, owner, coalition) = describe(&local.doc)
            .map_err(|source| SessionError::NotACoalitionDocument { doc_id, source })?;
        let now = chrono::Utc::now().timestamp();
        let held: Vec<NewHeld> = out
            .iter()
            .filter_map(|(hash, reason)| {
                let change = local.doc.get_change_by_hash(hash)?.clone();
                Some(NewHeld {
                    doc_id: doc_id.to_string(),
                    coalition: coalition.clone(),
                    author: CommitInfo::parse(change.message())
                        .map(|i| format!("{} ({}), device {}", i.user, i.org, i.device)),
                    change,
                    sent_by: None,
                    reason: reason.clone(),
                    at: now,
                })
            })
            .collect();
        self.local.store.replace_doc(
            DocRecord {
                id: doc_id,
                coalition: &coalition,
                kind,
                owner: owner.as_deref(),
                doc: &mut rebuilt,
            },
            &held,
        )?;
        local.doc = rebuilt;
        for (hash, reason) in &out {
            self.stats.refused.push((hash.to_string(), reason.clone()));
        }
        self.events.push_back(SessionEvent::Refused {
            doc_id,
            changes: out.len(),
            reasons: refused.iter().map(|c| c.reason.clone()).collect(),
        });
        tracing::warn!(%doc_id, changes = out.len(), "the relay refused changes; they are kept aside");
        // Sync again from a fresh state: the relay's view of our heads is out of date.
        self.engine.forget_doc(doc_id);
        Ok(self.engine.share_doc(doc_id, &mut self.local))
    }

    /// Changes set aside after a refusal that have now come back from the relay (a
    /// coordinator accepted them there) are marked accepted: `status` no longer lists them.
    fn note_returned(&mut self, doc_id: DocumentId) -> Result<(), SessionError> {
        let Some(local) = self.local.docs.get_mut(&doc_id) else {
            return Ok(());
        };
        let id = doc_id.to_string();
        let held = self
            .local
            .store
            .held_changes(None, Some(HeldStatus::Held))?;
        let now = chrono::Utc::now().timestamp();
        for h in held.iter().filter(|h| h.doc_id == id) {
            let back = h
                .hash
                .parse::<ChangeHash>()
                .is_ok_and(|hash| local.doc.get_change_by_hash(&hash).is_some());
            if back {
                self.local
                    .store
                    .decide_held(h.id, HeldStatus::Accepted, "relay", now)?;
            }
        }
        Ok(())
    }

    /// Saves a document the relay changed, durably, and reports what arrived.
    fn save_received(
        &mut self,
        doc_id: DocumentId,
        since: &[ChangeHash],
    ) -> Result<(), SessionError> {
        let Some(local) = self.local.docs.get_mut(&doc_id) else {
            return Ok(());
        };
        let (kind, owner, named) = describe(&local.doc)
            .map_err(|source| SessionError::NotACoalitionDocument { doc_id, source })?;
        // Stored under the coalition the document names: a document of another coalition
        // listed by ours must not break loading ours.
        let coalition = named;
        local.kind = Some(kind);
        local.owner = owner.clone();
        self.local.store.save_docs(vec![DocRecord {
            id: doc_id,
            coalition: &coalition,
            kind,
            owner: owner.as_deref(),
            doc: &mut local.doc,
        }])?;
        let mut authors: Vec<String> = Vec::new();
        let metas = local.doc.get_changes_meta(since);
        let changes = metas.len();
        for meta in metas {
            let who = CommitInfo::parse(meta.message.as_deref())
                .map(|info| format!("{} ({})", info.user, info.org))
                .unwrap_or_else(|| format!("actor {}", meta.actor.to_hex_string()));
            if !authors.contains(&who) {
                authors.push(who);
            }
        }
        self.stats.received.insert(doc_id);
        self.note_returned(doc_id)?;
        self.events.push_back(SessionEvent::RemoteChange {
            doc_id,
            kind: Some(kind),
            owner,
            changes,
            authors,
        });
        Ok(())
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The document a `sync` or `request` message sends changes of, if it sends any, and the
/// heads it sends (sorted).
fn carries_changes(message: &Message) -> Option<(DocumentId, Vec<ChangeHash>)> {
    let (Message::Sync(m) | Message::Request(m)) = message else {
        return None;
    };
    let decoded = automerge::sync::Message::decode(&m.data).ok()?;
    if decoded.changes.is_empty() {
        return None;
    }
    let mut heads = decoded.heads;
    heads.sort();
    Some((m.document_id, heads))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::model::DocKind;
    use crate::sync::PeerMetadata;
    use crate::transport::test_relay::{demo_relay, device_comment, dump_documents, FakeRelay};

    fn config() -> EngineConfig {
        let mut config = EngineConfig::new(PeerId::from("device-1"));
        config.metadata = PeerMetadata {
            storage_id: Some(StorageId::from("device-storage")),
            is_ephemeral: false,
        };
        config
    }

    /// Moves frames both ways until neither side has anything to say.
    fn pump(session: &mut Session<'_>, relay: &mut FakeRelay, conn: ConnId) {
        let mut inbox: VecDeque<Vec<u8>> = VecDeque::new();
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(frame) = session.poll_transmit() {
                inbox.extend(relay.receive(conn, &frame).into_iter().map(|(_, f)| f));
                moved = true;
            }
            while let Some(frame) = inbox.pop_front() {
                session.receive(&frame, Instant::now()).expect("receive");
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the exchange does not settle");
    }

    /// One whole connection: connect, exchange until quiet, checkpoint, disconnect.
    fn sync(
        store: &mut Store,
        relay: &mut FakeRelay,
        coalition: DocumentId,
        conn: ConnId,
    ) -> (SyncStats, Vec<SessionEvent>) {
        let mut session = Session::new(store, config(), &[coalition]).expect("session");
        relay.accept(conn);
        session.connect(Instant::now()).expect("connect");
        pump(&mut session, relay, conn);
        assert!(
            session.all_answered(),
            "unanswered: {:?}",
            session.unanswered()
        );
        session.checkpoint().expect("checkpoint");
        let mut events = Vec::new();
        while let Some(e) = session.poll_event() {
            events.push(e);
        }
        relay.disconnected(conn);
        (session.stats().clone(), events)
    }

    fn heads(doc: &mut AutoCommit) -> Vec<ChangeHash> {
        let mut h = doc.get_heads();
        h.sort();
        h
    }

    #[test]
    fn first_sync_brings_every_listed_document_to_an_empty_device() {
        let (mut relay, id, _cast) = demo_relay();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");

        let (stats, events) = sync(&mut store, &mut relay, id, ConnId(1));

        // The manifest came first, then every document it lists, in the same session.
        assert_eq!(stats.received.len(), relay.store.docs.len());
        assert!(stats.unavailable.is_empty());
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
        assert!(events.iter().any(|e| matches!(
            e,
            SessionEvent::RemoteChange { kind: Some(DocKind::Manifest), authors, .. } if !authors.is_empty()
        )));
        let mut local = store.load(&id).expect("the coalition loads from the store");
        assert_eq!(local.docs().count(), relay.store.docs.len());
        for d in local.docs_mut() {
            let theirs = relay.store.docs.get_mut(&d.id).expect("relay doc");
            assert_eq!(heads(&mut d.doc), heads(theirs), "{}", d.id);
        }
        // Nothing local is pending after a complete sync.
        assert_eq!(
            crate::transport::status(&store)
                .expect("status")
                .unsent_documents,
            0
        );
    }

    #[test]
    fn a_new_device_asks_for_every_enrolled_document_in_its_first_flight() {
        let (mut relay, id, _cast) = demo_relay();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        // What enrollment stores: who the relay is, and what it holds.
        let known: Vec<crate::transport::enroll::KnownDocument> = relay
            .store
            .docs
            .iter()
            .map(|(doc, d)| {
                let (kind, owner, _) = describe(d).expect("a coalition document");
                crate::transport::enroll::KnownDocument {
                    id: doc.to_string(),
                    coalition: id.to_string(),
                    kind,
                    owner,
                }
            })
            .collect();
        store.set_meta(keys::SERVER_PEER_ID, "relay").expect("meta");
        store
            .set_meta(keys::SERVER_STORAGE_ID, "relay-storage")
            .expect("meta");
        store
            .set_meta(
                keys::KNOWN_DOCUMENTS,
                &serde_json::to_string(&known).expect("json"),
            )
            .expect("meta");

        let mut session = Session::new(&mut store, config(), &[id]).expect("session");
        relay.accept(ConnId(1));
        session.connect(Instant::now()).expect("connect");
        let mut first = Vec::new();
        while let Some(frame) = session.poll_transmit() {
            first.push(Message::decode(&frame).expect("a message"));
        }
        // The join, then a request for every document: nothing waits for the relay's `peer`
        // or for the manifest to name the rest.
        assert!(matches!(first.first(), Some(Message::Join(_))), "{first:?}");
        let asked: BTreeSet<DocumentId> = first.iter().filter_map(Message::document_id).collect();
        let held: BTreeSet<DocumentId> = relay.store.docs.keys().copied().collect();
        assert_eq!(asked, held);
        assert_eq!(first.len(), held.len() + 1, "{first:?}");

        let mut inbox: VecDeque<Vec<u8>> = VecDeque::new();
        for message in &first {
            inbox.extend(
                relay
                    .receive(ConnId(1), &message.encode())
                    .into_iter()
                    .map(|(_, f)| f),
            );
        }
        // The relay's answers to that one flight bring everything.
        for frame in inbox {
            session.receive(&frame, Instant::now()).expect("receive");
        }
        assert!(session.all_answered(), "{:?}", session.unanswered());
        assert!(session.unsent().is_empty(), "{:?}", session.unsent());
        assert_eq!(session.stats().received, held);
        assert!(
            session.stats().warnings.is_empty(),
            "{:?}",
            session.stats().warnings
        );
    }

    #[test]
    fn a_local_edit_reaches_the_relay_on_the_next_session_with_few_bytes() {
        let (mut relay, id, cast) = demo_relay();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        let (first, _) = sync(&mut store, &mut relay, id, ConnId(1));

        let edited = device_comment(&mut store, &id, &cast.bhmac, "road open again");
        assert_eq!(edited.len(), 1);
        let status = crate::transport::status(&store).expect("status");
        assert_eq!(
            status.unsent_documents, 1,
            "the edit is not on the relay yet"
        );

        let (second, _) = sync(&mut store, &mut relay, id, ConnId(2));
        let mut local = store.load_doc(&edited[0]).expect("load").expect("doc");
        let theirs = relay.store.docs.get_mut(&edited[0]).expect("relay doc");
        assert_eq!(heads(&mut local.doc), heads(theirs));
        assert!(second.received.is_empty(), "nothing new came back");
        // The persisted sync states mean only what the relay lacks goes over the wire.
        assert!(
            second.bytes_sent * 10 < first.bytes_received,
            "sent {} bytes after receiving {} on the first sync",
            second.bytes_sent,
            first.bytes_received
        );
        assert_eq!(
            crate::transport::status(&store)
                .expect("status")
                .unsent_documents,
            0
        );
    }

    #[test]
    fn remote_changes_are_stored_and_attributed() {
        let (mut relay, id, cast) = demo_relay();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        sync(&mut store, &mut relay, id, ConnId(1));

        // Someone else's edit reaches the relay (through another device).
        let other_dir = tempfile::tempdir().expect("tempdir");
        let mut other = Store::open(other_dir.path()).expect("store");
        sync(&mut other, &mut relay, id, ConnId(2));
        let npa = &cast.operators["NPA"];
        let edited = device_comment(&mut other, &id, npa, "teams stood down");
        sync(&mut other, &mut relay, id, ConnId(3));

        let (stats, events) = sync(&mut store, &mut relay, id, ConnId(4));
        assert_eq!(stats.received.iter().copied().collect::<Vec<_>>(), edited);
        let who = format!("{} ({})", npa.user, npa.org);
        assert!(
            events.iter().any(|e| matches!(
                e,
                SessionEvent::RemoteChange { kind: Some(DocKind::Comments), authors, changes: 1, .. }
                    if authors == &vec![who.clone()]
            )),
            "{events:?}"
        );
        let mut mine = store.load_doc(&edited[0]).expect("load").expect("doc");
        let mut theirs = other.load_doc(&edited[0]).expect("load").expect("doc");
        assert_eq!(heads(&mut mine.doc), heads(&mut theirs.doc));
    }

    #[test]
    fn an_unknown_coalition_is_reported_unavailable_and_nothing_is_stored() {
        let mut relay = FakeRelay::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        let id = DocumentId::new_random();
        let (stats, events) = sync(&mut store, &mut relay, id, ConnId(1));
        assert_eq!(
            stats.unavailable.iter().copied().collect::<Vec<_>>(),
            vec![id]
        );
        assert!(events.contains(&SessionEvent::Unavailable { doc_id: id }));
        assert!(store.coalitions().expect("list").is_empty());
    }

    #[test]
    fn a_document_that_names_no_coalition_is_not_stored_nor_acknowledged() {
        use automerge::transaction::{CommitOptions, Transactable};
        let mut relay = FakeRelay::new();
        let id = DocumentId::new_random();
        let mut junk = AutoCommit::new();
        junk.put(automerge::ROOT, "hello", "world").expect("put");
        junk.commit_with(CommitOptions::default().with_time(1_700_000_000));
        relay.store.docs.insert(id, junk);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("store");
        let before = dump_documents(store.path());

        let mut session = Session::new(&mut store, config(), &[id]).expect("session");
        relay.accept(ConnId(1));
        session.connect(Instant::now()).expect("connect");
        let mut to_relay: VecDeque<Vec<u8>> = VecDeque::new();
        let mut error = None;
        'exchange: for _ in 0..100 {
            while let Some(frame) = session.poll_transmit() {
                to_relay.push_back(frame);
            }
            let Some(frame) = to_relay.pop_front() else {
                break;
            };
            for (_, back) in relay.receive(ConnId(1), &frame) {
                if let Err(e) = session.receive(&back, Instant::now()) {
                    error = Some(e);
                    break 'exchange;
                }
            }
        }
        assert!(matches!(
            error,
            Some(SessionError::NotACoalitionDocument { doc_id, .. }) if doc_id == id
        ));
        drop(session);
        // No chunk, no document row. The only sync state written is the one of our first
        // `request`: it claims nothing of the document.
        let after: Vec<String> = dump_documents(store.path())
            .into_iter()
            .filter(|row| !row.starts_with("state|"))
            .collect();
        assert_eq!(after, before);
        if let Some(bytes) = store.sync_state(&id, "relay-storage").expect("state") {
            let state = automerge::sync::State::decode(&bytes).expect("decode");
            assert!(state.shared_heads.is_empty());
        }
    }
}
