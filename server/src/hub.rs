//! The sync hub: one thread that owns the [`SyncEngine`], the documents in memory and the
//! document store, and carries out the engine's actions.
//!
//! WebSocket tasks only move frames: they send [`Event`]s to the hub over a bounded channel
//! and write what the hub puts in their outbox. Keeping the engine, the documents and SQLite
//! on one dedicated thread keeps blocking work off the async workers and needs no locks.
//!
//! # Durability
//!
//! The hub works in batches: it takes every event already waiting (up to [`MAX_BATCH`]),
//! feeds them to the engine, and holds back every frame the engine wants to send. At the end
//! of the batch it encodes what changed (each document's new changes, the peers' sync
//! states, refused changes, quota counts) and hands that to the store writer, a thread with
//! its own SQLite connection (`writer`), then goes on with the next events while the writer
//! commits. A batch's frames are sent once its transaction returned, and never before an
//! earlier batch's: a later batch's frames may carry changes an earlier one saves. So nothing
//! that reflects a change (an acknowledgement, a forward to another peer) leaves the relay
//! before the change is durable, the hub never waits for an fsync, and under load the writer
//! puts every batch queued behind the one it was writing into one transaction. A document
//! with writes in flight is never unloaded. If a write fails, that batch and every later
//! batch prepared before the hub saw the failure are given up: their frames about those
//! documents are dropped, the documents unloaded (they reload from storage), and the
//! connections involved closed, so that their devices send the changes again.
//!
//! # Backpressure
//!
//! A connection whose outbox holds more than 256 frames (`HOLD_AT`; a slow link, or a relay
//! short of CPU whose socket tasks fall behind) is held: the engine stops passing it changes
//! as they arrive and only notes the documents with news ([`SyncEngine::hold`]). Once its
//! outbox is down to 32 frames (`RELEASE_AT`; checked after every batch and every tick), it gets
//! one message per such document with everything it lacks. Under load that turns many small
//! messages into a few larger ones, less work for everyone, instead of a queue that grows
//! until the connection is dropped. A connection whose outbox fills all the same is dropped
//! and resyncs on reconnect.
//!
//! # Access
//!
//! A connection belongs to an enrolled device, which may sync the documents of its
//! coalitions: the documents stored with one of them (the manifest and what it lists). The
//! hub checks every message naming a document before the engine sees it; anything else gets
//! `doc-unavailable`, exactly as a missing document. A document the store does not know and
//! the peer brings data for is held provisionally for that connection alone; once its first
//! changes arrive its root must describe it as a non-manifest document of one of the device's
//! coalitions, or it is dropped and refused.
//!
//! # Memory
//!
//! At most `max_docs` documents stay loaded: after each batch the least recently used ones
//! that no open connection syncs are unloaded (the engine forgets them, their sync states are
//! persisted already). Documents that live connections sync are never unloaded, since the
//! engine would stop forwarding changes of them; the bound may be exceeded while they are.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use coalition_core::check::{Author, Refusal};
use coalition_core::coalition::describe;
use coalition_core::model::DocKind;
use coalition_core::model::Role;
use coalition_core::resolve::{resolve_doc, roles_in, Choice};
use coalition_core::store::{DocRecord, NewHeld, Store, Usage, COMPACT_AFTER};
use coalition_core::sync::message::{
    DocUnavailableMessage, ErrorMessage, RefusedChange, RefusedChanges, SyncMessage,
};
use coalition_core::sync::{
    Action, ConnId, DisconnectReason, DocumentId, DocumentSource, EngineConfig, Listing, Message,
    StorageId, SyncEngine,
};
use coalition_core::Identity;
use tokio::sync::{mpsc, oneshot};

use crate::auth::DeviceAuth;
use crate::authors::Authors;
use crate::error::AppError;
use crate::events::{Feed, FeedSender};
use crate::limits::{ConnLimits, DeviceRefusals, LimitHit, Limits};
use crate::metrics::Metrics;
use crate::screen::{self, Pending};

mod writer;
use writer::{Done, Job, Writer};

/// At most this many events are handled between two saves.
pub const MAX_BATCH: usize = 256;

/// While handling a batch, the hub looks for finished writes every this many events.
const RELEASE_EVERY: usize = 16;

/// Frames that may wait for one slow connection before the hub drops it.
pub const OUTBOX_CAPACITY: usize = 1024;

/// Frames queued for a connection beyond which the engine holds back what it would send it
/// (see the module docs on backpressure).
const HOLD_AT: usize = 256;

/// Frames queued at or below which a held connection is released.
const RELEASE_AT: usize = 32;

/// How often the hub compacts stored documents.
const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// WebSocket close code for a policy refusal (revoked device).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for a protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// WebSocket close code for a relay-side failure.
pub const CLOSE_INTERNAL: u16 = 1011;
/// WebSocket close code for a relay going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code for a normal close.
pub const CLOSE_NORMAL: u16 = 1000;

/// The WebSocket close code and reason for an engine disconnect. Reasons are short and fixed:
/// a close frame holds at most 123 bytes, and the peer's own error text is not echoed back.
fn close_for(reason: &DisconnectReason) -> (u16, &'static str) {
    match reason {
        DisconnectReason::HandshakeTimeout => (CLOSE_PROTOCOL, "handshake timed out"),
        DisconnectReason::UnsupportedProtocolVersion => {
            (CLOSE_PROTOCOL, "unsupported protocol version")
        }
        DisconnectReason::ProtocolViolation => (CLOSE_PROTOCOL, "protocol violation"),
        DisconnectReason::RemoteError(_) => (CLOSE_NORMAL, "peer reported an error"),
        DisconnectReason::PeerLeft => (CLOSE_NORMAL, "peer left"),
        DisconnectReason::Replaced => (CLOSE_NORMAL, "replaced by a newer connection"),
        _ => (CLOSE_NORMAL, "closed"),
    }
}

/// What a connection task or the server tells the hub.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An authenticated WebSocket was accepted.
    Open {
        /// Its id.
        conn: ConnId,
        /// The device behind it.
        device: Arc<DeviceAuth>,
        /// Where the hub puts frames for it.
        outbox: mpsc::Sender<Outgoing>,
    },
    /// A frame arrived.
    Frame {
        /// The connection.
        conn: ConnId,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// The socket closed.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// These devices were revoked: close their connections now.
    Revoked {
        /// The device ids.
        devices: BTreeSet<String>,
    },
    /// Time passed (handshake timeouts, compaction).
    Tick,
    /// Resolve a conflict of `doc` (dashboard): written as `who`, saved and sent to peers like
    /// any change; `reply` gets the new change's hash once it is durable.
    Resolve {
        /// The coalition (manifest id) the document must belong to.
        coalition: DocumentId,
        /// The document holding the conflict.
        doc: DocumentId,
        /// The author (the coordinator, on device `dashboard`).
        who: Identity,
        /// The value to keep.
        choice: Choice,
        /// Answered after the save.
        reply: oneshot::Sender<Result<String, AppError>>,
    },
    /// Accept or discard a change held in quarantine (HTTP, coordinators): an accepted one is
    /// applied, saved and sent to peers like any change; `reply` gets the numbers of the held
    /// changes decided once that is durable.
    Quarantine {
        /// The coalition (manifest id) the change must belong to.
        coalition: DocumentId,
        /// The held change's number.
        id: i64,
        /// Accept or discard.
        decision: crate::quarantine::Decision,
        /// Who decided (`user (org), device …`).
        by: String,
        /// Answered after the save.
        reply: oneshot::Sender<Result<Vec<i64>, AppError>>,
    },
    /// The store writer finished a batch (sent by the hub's own writer thread).
    Saved,
    /// Close every connection, flush, close the store, then answer.
    Shutdown {
        /// Answered once the store is closed.
        done: oneshot::Sender<()>,
    },
}

/// What the hub asks a connection task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Send this binary frame.
    Frame(Vec<u8>),
    /// Send a close frame and stop.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// Frames waiting in an outbox.
fn queued(outbox: &mpsc::Sender<Outgoing>) -> usize {
    outbox.max_capacity() - outbox.capacity()
}

/// A handle to send events to the hub.
#[derive(Clone, Debug)]
pub struct HubHandle {
    tx: mpsc::Sender<Event>,
}

impl HubHandle {
    /// Send an event; false if the hub has stopped.
    pub async fn send(&self, event: Event) -> bool {
        self.tx.send(event).await.is_ok()
    }

    /// Ask the hub to close everything and wait until it has.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Event::Shutdown { done }).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Where the hub stands towards one stored or provisional document.
#[derive(Debug, Clone)]
struct DocMeta {
    coalition: DocumentId,
    coalition_text: String,
    kind: DocKind,
    owner: Option<String>,
}

struct Loaded {
    doc: AutoCommit,
    last_use: u64,
}

/// What the store has of a document.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lookup {
    /// Stored, and now loaded.
    Stored,
    /// Not stored.
    Missing,
    /// Stored but unreadable.
    Failed,
}

/// The documents in memory and the store behind them.
struct Docs {
    store: Store,
    loaded: HashMap<DocumentId, Loaded>,
    /// What the store says of each document the hub has seen (kept after unloading: small).
    meta: HashMap<DocumentId, DocMeta>,
    /// Documents pushed by a connection and not yet accepted, by the connection.
    provisional: HashMap<DocumentId, ConnId>,
    clock: u64,
}

impl DocumentSource for Docs {
    fn get_mut(&mut self, doc_id: &DocumentId) -> Option<&mut AutoCommit> {
        self.loaded.get_mut(doc_id).map(|l| &mut l.doc)
    }

    fn load_sync_state(&mut self, doc_id: &DocumentId, peer: &StorageId) -> Option<Vec<u8>> {
        match self.store.sync_state(doc_id, peer.as_str()) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(%doc_id, %error, "cannot read a sync state; starting afresh");
                None
            }
        }
    }
}

impl Docs {
    fn touch(&mut self, doc_id: &DocumentId) {
        self.clock += 1;
        if let Some(l) = self.loaded.get_mut(doc_id) {
            l.last_use = self.clock;
        }
    }

    /// Load a document from the store if it is there and not loaded yet.
    fn ensure_loaded(&mut self, doc_id: &DocumentId) -> Lookup {
        if self.loaded.contains_key(doc_id) {
            return if self.meta.contains_key(doc_id) {
                Lookup::Stored
            } else {
                Lookup::Missing
            };
        }
        match self.store.load_doc(doc_id) {
            Ok(Some(stored)) => {
                let Ok(coalition) = stored.coalition.parse::<DocumentId>() else {
                    tracing::error!(%doc_id, coalition = %stored.coalition, "stored document names a bad coalition id");
                    return Lookup::Failed;
                };
                self.meta.insert(
                    *doc_id,
                    DocMeta {
                        coalition,
                        coalition_text: stored.coalition,
                        kind: stored.kind,
                        owner: stored.owner,
                    },
                );
                self.clock += 1;
                self.loaded.insert(
                    *doc_id,
                    Loaded {
                        doc: stored.doc,
                        last_use: self.clock,
                    },
                );
                Lookup::Stored
            }
            Ok(None) => Lookup::Missing,
            Err(error) => {
                // Never let a peer's copy stand in for a stored document that fails to load:
                // the stored bytes stay untouched for an operator to look at.
                tracing::error!(%doc_id, %error, "cannot load a document");
                Lookup::Failed
            }
        }
    }

    fn unload(&mut self, doc_id: &DocumentId) {
        self.loaded.remove(doc_id);
        self.store.forget(doc_id);
    }

    /// The roles of a coalition's member organisations, from its manifest (loaded if needed).
    fn member_roles(&mut self, coalition: &DocumentId) -> HashMap<String, Vec<Role>> {
        if self.ensure_loaded(coalition) != Lookup::Stored {
            return HashMap::new();
        }
        let Some(manifest) = self.loaded.get(coalition) else {
            return HashMap::new();
        };
        match coalition_core::coalition::read_collection::<coalition_core::model::Member>(
            &manifest.doc,
            coalition_core::model::keys::MEMBERS,
        ) {
            Ok(members) => members
                .into_iter()
                .map(|(org, m)| (org, m.role_set()))
                .collect(),
            Err(error) => {
                tracing::error!(%coalition, %error, "the member list is unreadable; no one may write");
                HashMap::new()
            }
        }
    }
}

/// Per connection state the hub keeps besides the engine's.
struct ConnInfo {
    device: Arc<DeviceAuth>,
    outbox: mpsc::Sender<Outgoing>,
    /// Documents this connection has synced (they stay loaded while it is open).
    docs: HashSet<DocumentId>,
    /// Documents refused to this connection (pushed for a coalition it is not in).
    refused: HashSet<DocumentId>,
    /// A close was queued; further frames are ignored.
    closing: bool,
    /// Its rate buckets and refusal count.
    limits: ConnLimits,
}

/// What one batch holds back until its documents are saved.
#[derive(Default)]
struct Batch {
    /// Frames and closes, in order, with the document each frame is about.
    out: Vec<(ConnId, Option<DocumentId>, Outgoing)>,
    /// Documents changed by peers in this batch.
    changed: BTreeSet<DocumentId>,
    /// Sync states to persist: the last one per document and peer storage id wins.
    sync_states: HashMap<(DocumentId, String), Vec<u8>>,
    /// Connections whose frames were handled in this batch.
    sources: BTreeSet<ConnId>,
    /// Documents refused in this batch: nothing more is sent about them.
    refused: HashSet<DocumentId>,
    /// Answers to send once the batch is saved (or failed to be).
    replies: Vec<(oneshot::Sender<Result<String, AppError>>, String)>,
    /// Changes refused in this batch, for the quarantine.
    held: Vec<NewHeld>,
    /// Quarantined changes accepted in this batch: marked accepted once the batch is saved.
    accepted: Vec<Accepted>,
    /// Manifests changed in this batch: memberships to look at again.
    manifests: BTreeSet<DocumentId>,
    /// What this batch stores from each person.
    usage: HashMap<String, Usage>,
}

/// Quarantined changes applied in a batch, to mark accepted once it is saved.
struct Accepted {
    ids: Vec<i64>,
    by: String,
    reply: oneshot::Sender<Result<Vec<i64>, AppError>>,
}

/// A batch whose writes were handed to the store writer: what it releases once they are
/// durable (and every batch before it has been released).
struct Unsent {
    /// The writer's job number; `None` when the batch wrote nothing.
    seq: Option<u64>,
    /// The epoch it was prepared in (see [`writer`]).
    epoch: u64,
    /// `Some` once known: saved (or nothing to save), or why not.
    result: Option<Result<(), String>>,
    /// Frames and closes, in order, with the document each frame is about.
    out: Vec<(ConnId, Option<DocumentId>, Outgoing)>,
    /// Documents it saves.
    changed: BTreeSet<DocumentId>,
    /// Documents whose unsaved changes its frames may carry, when an earlier batch of its
    /// epoch failed to save them.
    lost: BTreeSet<DocumentId>,
    /// How many documents it saves, for the metrics.
    documents: u64,
    /// Connections whose frames it handled.
    sources: BTreeSet<ConnId>,
    replies: Vec<(oneshot::Sender<Result<String, AppError>>, String)>,
    accepted: Vec<Accepted>,
}

/// How the hub is set up.
pub struct HubConfig {
    /// The engine's identity and limits.
    pub engine: EngineConfig,
    /// How many documents to keep in memory (see the module docs).
    pub max_docs: usize,
    /// Where to announce the coalitions each saved batch changed (see [`crate::events`]).
    pub feed: Option<FeedSender>,
    /// What one peer may send and store (see [`crate::limits`]).
    pub limits: Limits,
}

/// The hub's state; see the [module documentation](self).
pub struct Hub {
    engine: SyncEngine,
    docs: Docs,
    conns: HashMap<ConnId, ConnInfo>,
    metrics: Arc<Metrics>,
    max_docs: usize,
    last_compact: Instant,
    /// Who made a change; `None` on a hub without an auth database (tests), which then
    /// applies every change it receives unchecked.
    authors: Option<Authors>,
    /// What the change screen remembers per document.
    pending: HashMap<DocumentId, Pending>,
    /// The roles of each coalition's member organisations, read from its manifest.
    members: HashMap<DocumentId, HashMap<String, Vec<Role>>>,
    limits: Limits,
    /// Each device's refused changes, across its connections.
    refusals: DeviceRefusals,
    /// What the store holds from each person seen: (documents created, bytes), including
    /// this batch's.
    usage: HashMap<String, (i64, i64)>,
    /// Devices revoked while the hub runs: a connection authenticated just before its
    /// device's revocation and opened just after is closed too.
    revoked: HashSet<String>,
    feed: Option<FeedSender>,
    /// Commits batches on its own thread (see [`writer`]).
    writer: Writer,
    /// Batches handed to the writer and not released yet, oldest first.
    unsent: VecDeque<Unsent>,
    /// The writer's next job number.
    next_seq: u64,
    /// Bumped when a write failed and the batches behind it were given up.
    epoch: u64,
    /// Documents with writes not yet durable, and how many batches hold some: never unloaded.
    saving: HashMap<DocumentId, usize>,
    /// Connections the engine holds back (see the module docs on backpressure).
    held: HashSet<ConnId>,
}

/// Start the hub on its own thread. `authors` tells who made each incoming change (see
/// [`crate::screen`]); without it every change is applied unchecked, which only tests want.
pub fn spawn(
    config: HubConfig,
    store: Store,
    metrics: Arc<Metrics>,
    authors: Option<Authors>,
) -> std::io::Result<(HubHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    let writer_store = store
        .reopen()
        .map_err(|e| std::io::Error::other(anyhow::Error::new(e)))?;
    let writer = Writer::spawn(writer_store, tx.downgrade())?;
    let hub = Hub {
        engine: SyncEngine::new(config.engine),
        docs: Docs {
            store,
            loaded: HashMap::new(),
            meta: HashMap::new(),
            provisional: HashMap::new(),
            clock: 0,
        },
        conns: HashMap::new(),
        metrics,
        max_docs: config.max_docs.max(1),
        last_compact: Instant::now(),
        authors,
        pending: HashMap::new(),
        members: HashMap::new(),
        limits: config.limits,
        refusals: DeviceRefusals::default(),
        usage: HashMap::new(),
        revoked: HashSet::new(),
        feed: config.feed,
        writer,
        unsent: VecDeque::new(),
        next_seq: 0,
        epoch: 0,
        saving: HashMap::new(),
        held: HashSet::new(),
    };
    let thread = std::thread::Builder::new()
        .name("coalition-sync-hub".into())
        .spawn(move || hub.run(rx))?;
    Ok((HubHandle { tx }, thread))
}

impl Hub {
    fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Batch::default();
            let mut shutdown = None;
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(event) = next.take() {
                if let Event::Shutdown { done } = event {
                    shutdown = Some(done);
                    break;
                }
                self.handle(event, &mut batch);
                handled += 1;
                if handled % RELEASE_EVERY == 0 {
                    // Earlier batches' frames go as soon as they are durable, not when this
                    // batch is done.
                    self.release();
                }
                if handled < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.release_drained(&mut batch);
            self.commit(batch);
            self.evict();
            if let Some(done) = shutdown {
                self.flush();
                if let Some(feed) = &self.feed {
                    let _ = feed.send(Feed::Closing);
                }
                self.close_all();
                rx.close();
                self.writer.stop();
                let Hub { docs, .. } = self;
                if let Err(error) = docs.store.close() {
                    tracing::error!(%error, "closing the document store");
                }
                let _ = done.send(());
                tracing::info!("sync hub stopped");
                return;
            }
        }
    }

    fn handle(&mut self, event: Event, batch: &mut Batch) {
        match event {
            Event::Open {
                conn,
                device,
                outbox,
            } => {
                // A device that connects right after an admin command (say, the invite that
                // enrolled it) must see what that command wrote, not wait for the next tick.
                self.pick_up_external_writes(batch);
                if self.revoked.contains(&device.device_id) {
                    let _ = outbox.try_send(Outgoing::Close {
                        code: CLOSE_POLICY,
                        reason: "device revoked".into(),
                    });
                    return;
                }
                if !self
                    .refusals
                    .may_connect(&self.limits, &device.device_id, Instant::now())
                {
                    // Its refusals bucket is empty: it waits for the refill.
                    self.metrics.limits_hit.fetch_add(1, Ordering::Relaxed);
                    let _ = outbox.try_send(Outgoing::Close {
                        code: CLOSE_POLICY,
                        reason: "too many refused changes; retry later".into(),
                    });
                    return;
                }
                self.engine.accept(conn, Instant::now());
                self.conns.insert(
                    conn,
                    ConnInfo {
                        device,
                        outbox,
                        docs: HashSet::new(),
                        refused: HashSet::new(),
                        closing: false,
                        limits: ConnLimits::new(&self.limits, Instant::now()),
                    },
                );
            }
            Event::Frame { conn, bytes } => self.on_frame(conn, bytes, batch),
            Event::Closed { conn } => self.on_closed(conn, batch),
            Event::Revoked { devices } => {
                self.revoked.extend(devices.iter().cloned());
                if let Some(authors) = &mut self.authors {
                    authors.revoked(&devices);
                }
                let doomed: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| devices.contains(&c.device.device_id))
                    .map(|(conn, _)| *conn)
                    .collect();
                for conn in doomed {
                    tracing::info!(%conn, "closing the connection of a revoked device");
                    let peer = self.remote_peer(conn);
                    batch.out.push((
                        conn,
                        None,
                        Outgoing::Frame(
                            Message::Error(ErrorMessage {
                                message: "device_revoked: this device was revoked".into(),
                                refused: None,
                                sender_id: Some(self.engine.peer_id().clone()),
                                target_id: peer,
                            })
                            .encode(),
                        ),
                    ));
                    self.close(conn, CLOSE_POLICY, "device revoked", batch);
                }
            }
            Event::Tick => {
                let actions = self.engine.handle_timeout(Instant::now());
                self.perform(actions, batch);
                self.pick_up_external_writes(batch);
                if self.last_compact.elapsed() >= COMPACT_EVERY {
                    self.last_compact = Instant::now();
                    match self.docs.store.compact(COMPACT_AFTER) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(documents = n, "compacted"),
                        Err(error) => tracing::warn!(%error, "compaction failed"),
                    }
                }
            }
            Event::Resolve {
                coalition,
                doc,
                who,
                choice,
                reply,
            } => match self.resolve(coalition, doc, &who, &choice) {
                Ok(hash) => {
                    batch.changed.insert(doc);
                    self.note_manifest_change(doc, batch);
                    let actions = self.engine.local_change(doc, &mut self.docs);
                    self.perform(actions, batch);
                    batch.replies.push((reply, hash));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Event::Quarantine {
                coalition,
                id,
                decision,
                by,
                reply,
            } => self.decide_quarantined(coalition, id, decision, by, reply, batch),
            Event::Saved | Event::Shutdown { .. } => {}
        }
    }

    /// A coordinator's decision on a quarantined change (see [`crate::quarantine`]).
    fn decide_quarantined(
        &mut self,
        coalition: DocumentId,
        id: i64,
        decision: crate::quarantine::Decision,
        by: String,
        reply: oneshot::Sender<Result<Vec<i64>, AppError>>,
        batch: &mut Batch,
    ) {
        use crate::quarantine::{apply_held, Decision, QuarantineError};
        let held = match self.docs.store.held_change(id) {
            Ok(Some((held, _))) if held.coalition == coalition.to_string() => held,
            Ok(_) => {
                let _ = reply.send(Err(QuarantineError::NotFound(id).into()));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(AppError::internal(e)));
                return;
            }
        };
        let now = chrono::Utc::now().timestamp();
        match decision {
            Decision::Discard => {
                let answer = match self.docs.store.decide_held(
                    id,
                    coalition_core::store::HeldStatus::Discarded,
                    &by,
                    now,
                ) {
                    Ok(true) => Ok(vec![id]),
                    Ok(false) => Err(QuarantineError::AlreadyDecided {
                        id,
                        status: held.status,
                    }
                    .into()),
                    Err(e) => Err(AppError::internal(e)),
                };
                let _ = reply.send(answer);
            }
            Decision::Accept => {
                let Ok(doc_id) = held.doc_id.parse::<DocumentId>() else {
                    let _ = reply.send(Err(QuarantineError::NoDocument(held.doc_id).into()));
                    return;
                };
                if self.docs.ensure_loaded(&doc_id) != Lookup::Stored {
                    let _ = reply.send(Err(QuarantineError::NoDocument(held.doc_id).into()));
                    return;
                }
                self.docs.touch(&doc_id);
                let Docs { store, loaded, .. } = &mut self.docs;
                let Some(l) = loaded.get_mut(&doc_id) else {
                    let _ = reply.send(Err(QuarantineError::NoDocument(held.doc_id).into()));
                    return;
                };
                match apply_held(store, &mut l.doc, &held.doc_id, id) {
                    Ok(ids) => {
                        batch.changed.insert(doc_id);
                        self.note_manifest_change(doc_id, batch);
                        let actions = self.engine.local_change(doc_id, &mut self.docs);
                        self.perform(actions, batch);
                        batch.accepted.push(Accepted { ids, by, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
        }
    }

    /// Write a conflict's chosen value into a loaded document of `coalition`, with the
    /// author's roles from its manifest (the same rights checks as any edit).
    fn resolve(
        &mut self,
        coalition: DocumentId,
        doc: DocumentId,
        who: &Identity,
        choice: &Choice,
    ) -> Result<String, AppError> {
        for id in [coalition, doc] {
            let belongs = self.docs.ensure_loaded(&id) == Lookup::Stored
                && self
                    .docs
                    .meta
                    .get(&id)
                    .is_some_and(|m| m.coalition == coalition);
            if !belongs {
                return Err(AppError::NotFound(format!(
                    "no document {id} in coalition {coalition}"
                )));
            }
        }
        let manifest = self
            .docs
            .loaded
            .get(&coalition)
            .ok_or_else(|| AppError::NotFound(format!("no coalition {coalition}")))?;
        let roles = roles_in(&manifest.doc, &who.org).map_err(AppError::internal)?;
        self.docs.touch(&doc);
        let loaded = self
            .docs
            .loaded
            .get_mut(&doc)
            .ok_or_else(|| AppError::NotFound(format!("no document {doc}")))?;
        let now = chrono::Utc::now().timestamp();
        let hash = resolve_doc(&mut loaded.doc, &roles, who, choice, now)?;
        Ok(hash.to_string())
    }

    fn remote_peer(&self, conn: ConnId) -> Option<coalition_core::sync::PeerId> {
        self.engine
            .peers()
            .find(|(c, _, _)| *c == conn)
            .map(|(_, id, _)| id.clone())
    }

    /// Queue a close and stop syncing with the connection at once.
    fn close(&mut self, conn: ConnId, code: u16, reason: &str, batch: &mut Batch) {
        let Some(info) = self.conns.get_mut(&conn) else {
            return;
        };
        if info.closing {
            return;
        }
        info.closing = true;
        batch.out.push((
            conn,
            None,
            Outgoing::Close {
                code,
                reason: reason.to_string(),
            },
        ));
        let actions = self.engine.peer_disconnected(conn, &mut self.docs);
        self.perform(actions, batch);
    }

    fn on_closed(&mut self, conn: ConnId, batch: &mut Batch) {
        let actions = self.engine.peer_disconnected(conn, &mut self.docs);
        self.perform(actions, batch);
        self.conns.remove(&conn);
        // Documents this connection pushed and that were never accepted go with it.
        let orphans: Vec<DocumentId> = self
            .docs
            .provisional
            .iter()
            .filter(|(_, owner)| **owner == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.docs.provisional.remove(&id);
            self.engine.forget_doc(id);
            self.docs.unload(&id);
        }
    }

    fn on_frame(&mut self, conn: ConnId, bytes: Vec<u8>, batch: &mut Batch) {
        let Some(info) = self.conns.get(&conn) else {
            return;
        };
        if info.closing {
            return;
        }
        self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        batch.sources.insert(conn);
        let limits = self.limits;
        let admitted = self
            .conns
            .get_mut(&conn)
            .map(|c| c.limits.admit(&limits, bytes.len(), Instant::now()));
        if let Some(Err(hit)) = admitted {
            self.limit_hit(conn, hit, batch);
            return;
        }
        let message = match Message::decode(&bytes) {
            Ok(message) => message,
            Err(_) => {
                // The engine turns a bad frame into an `error` and a close, or ignores an
                // unknown type; it decodes again, which only costs on this rare path.
                let actions =
                    self.engine
                        .receive_bytes(conn, &bytes, Instant::now(), &mut self.docs);
                self.perform(actions, batch);
                return;
            }
        };
        let doc_id = message.document_id();
        if let Some(doc_id) = doc_id {
            if !self.admit(conn, doc_id, &message, batch) {
                return;
            }
        }
        if matches!(message, Message::Sync(_) | Message::Request(_)) {
            self.metrics.sync_rounds.fetch_add(1, Ordering::Relaxed);
        }
        let message = match message {
            Message::Sync(m) => match self.screen_incoming(conn, m, batch) {
                Some(m) => Message::Sync(m),
                None => return,
            },
            Message::Request(m) => match self.screen_incoming(conn, m, batch) {
                Some(m) => Message::Request(m),
                None => return,
            },
            other => other,
        };
        let engine = &mut self.engine;
        let docs = &mut self.docs;
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.receive(conn, message, Instant::now(), docs)
        }));
        match result {
            Ok(actions) => self.perform(actions, batch),
            Err(_) => {
                // A bug (in the engine or automerge) met this peer's input. The document it
                // touched may be half-applied: unload it so it reloads from storage, and drop
                // the peer; everyone else keeps going.
                self.metrics.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%conn, doc = ?doc_id, "handling a frame panicked; closing the connection");
                if let Some(doc_id) = doc_id {
                    batch.changed.remove(&doc_id);
                    self.engine.forget_doc(doc_id);
                    self.docs.provisional.remove(&doc_id);
                    self.docs.unload(&doc_id);
                }
                self.close(conn, CLOSE_INTERNAL, "internal error", batch);
            }
        }
    }

    /// The roles of a coalition's members, cached until its manifest changes.
    fn roles_of(&mut self, coalition: &DocumentId) -> &HashMap<String, Vec<Role>> {
        if !self.members.contains_key(coalition) {
            let roles = self.docs.member_roles(coalition);
            self.members.insert(*coalition, roles);
        }
        &self.members[coalition]
    }

    /// Check the changes a `sync` or `request` message carries before the engine applies them
    /// (see [`crate::screen`]). Returns the message the engine should see, or `None` when the
    /// connection is being closed instead.
    fn screen_incoming(
        &mut self,
        conn: ConnId,
        message: SyncMessage,
        batch: &mut Batch,
    ) -> Option<SyncMessage> {
        if self.authors.is_none() {
            return Some(message);
        }
        let doc_id = message.document_id;
        let Ok(data) = automerge::sync::Message::decode(&message.data) else {
            // The engine reports a malformed sync message to the peer.
            return Some(message);
        };
        if data.changes.is_empty() && self.pending.get(&doc_id).is_none_or(Pending::is_empty) {
            return Some(message);
        }
        let device = self.conns.get(&conn)?.device.clone();
        let context = match self.docs.meta.get(&doc_id) {
            Some(m) => Some((
                m.kind,
                m.owner.clone(),
                m.coalition,
                m.coalition_text.clone(),
            )),
            None => self.describe_new(doc_id, &data),
        };
        let Some((kind, owner, coalition, coalition_text)) = context else {
            // A new document that does not say yet what it is: decided once it does (see
            // `on_changed`).
            return Some(message);
        };
        if !self.docs.meta.contains_key(&doc_id)
            && (kind == DocKind::Manifest || !device.coalitions.contains(&coalition))
        {
            // A new coalition, or a document for a coalition the device is not in: refused
            // whole as a document (see `on_changed`), and nothing of it is kept: a device
            // cannot fill another coalition's quarantine.
            return Some(message);
        }
        let roles = self.roles_of(&coalition).clone();
        let Hub {
            authors,
            docs,
            pending,
            ..
        } = self;
        let Some(authors) = authors.as_mut() else {
            return Some(message);
        };
        let mut db_failed = None;
        let mut author = |actor: &automerge::ActorId| -> Result<Author, Refusal> {
            match authors.owner(actor, &device) {
                Ok(Some(o)) if o.revoked => Err(Refusal::AuthorRevoked {
                    actor: actor.to_hex_string(),
                    device: o.device_id,
                }),
                Ok(Some(o)) => Ok(Author {
                    roles: roles.get(&o.org).cloned().unwrap_or_default(),
                    org: o.org,
                }),
                Ok(None) => Err(Refusal::UnknownAuthor {
                    actor: actor.to_hex_string(),
                }),
                Err(error) => {
                    db_failed = Some(error.to_string());
                    Err(Refusal::UnknownAuthor {
                        actor: actor.to_hex_string(),
                    })
                }
            }
        };
        let mut scratch = AutoCommit::new();
        let doc = match docs.loaded.get_mut(&doc_id) {
            Some(l) => &mut l.doc,
            None => &mut scratch,
        };
        let state = pending.entry(doc_id).or_default();
        let outcome = screen::screen(doc, kind, owner.as_deref(), data, state, &mut author);
        if let Some(error) = db_failed {
            // Nothing is judged on a failing auth database: forget this message's verdicts,
            // and let the peer send its changes again later.
            tracing::error!(%error, %conn, "cannot read who made changes; closing the connection");
            self.pending.remove(&doc_id);
            self.close(
                conn,
                CLOSE_INTERNAL,
                "relay cannot check changes now; retry later",
                batch,
            );
            return None;
        }
        let screened = match outcome {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%conn, %doc_id, %error, "refusing a sync message");
                self.refuse_message(conn, &error.to_string(), batch);
                return None;
            }
        };
        if screened.accepted_bytes > 0 {
            let person = person_of(&device);
            if let Err(hit) = self.charge(&person, 0, screened.accepted_bytes as i64, batch) {
                // Nothing of the message is applied; the device keeps its changes.
                self.pending.remove(&doc_id);
                self.limit_hit(conn, hit, batch);
                return None;
            }
        }
        self.metrics
            .changes_accepted
            .fetch_add(screened.accepted as u64, Ordering::Relaxed);
        self.metrics
            .screen_copies
            .fetch_add(screened.copies as u64, Ordering::Relaxed);
        if !screened.refused.is_empty() {
            // Refused changes are kept, so they count toward what the relay stores from the
            // sender, and toward the device's refusals: neither the quarantine nor the work of
            // checking can grow without bound.
            let bytes: usize = screened
                .refused
                .iter()
                .map(|r| r.change.raw_bytes().len())
                .sum();
            let charged = self
                .refusals
                .charge(
                    &self.limits,
                    &device.device_id,
                    screened.refused.len(),
                    Instant::now(),
                )
                .and_then(|()| self.charge(&person_of(&device), 0, bytes as i64, batch));
            if let Err(hit) = charged {
                self.pending.remove(&doc_id);
                self.limit_hit(conn, hit, batch);
                return None;
            }
            self.quarantine(
                conn,
                doc_id,
                &coalition_text,
                &device,
                screened.refused,
                batch,
            );
        }
        Some(match screened.rewritten {
            Some(data) => SyncMessage { data, ..message },
            None => message,
        })
    }

    /// What a document the relay does not hold yet would be, from the changes a peer brings:
    /// kind, owner and coalition, if they say.
    fn describe_new(
        &mut self,
        doc_id: DocumentId,
        data: &automerge::sync::Message,
    ) -> Option<(DocKind, Option<String>, DocumentId, String)> {
        let changes = screen::changes_in(&data.changes).ok()?;
        let mut probe = match self.docs.loaded.get(&doc_id) {
            Some(l) => l.doc.clone(),
            None => AutoCommit::new(),
        };
        probe.apply_changes(changes).ok()?;
        let (kind, owner, coalition_text) = describe(&probe).ok()?;
        let coalition = coalition_text.parse().ok()?;
        Some((kind, owner, coalition, coalition_text))
    }

    /// Keep refused changes in the quarantine (saved with this batch) and tell the sender
    /// which and why (sent once they are saved).
    fn quarantine(
        &mut self,
        conn: ConnId,
        doc_id: DocumentId,
        coalition: &str,
        device: &DeviceAuth,
        refused: Vec<coalition_core::check::Refused>,
        batch: &mut Batch,
    ) {
        let now = chrono::Utc::now().timestamp();
        let mut named = Vec::with_capacity(refused.len());
        for r in refused {
            let reason = r.reason.to_string();
            let hash = r.change.hash().to_string();
            tracing::warn!(%conn, %doc_id, change = %hash, device = %device.device_id, %reason, "refused a change; kept in quarantine");
            let author = self.author_text(r.change.actor_id(), device);
            named.push(RefusedChange {
                hash,
                reason: reason.clone(),
            });
            batch.held.push(NewHeld {
                doc_id: doc_id.to_string(),
                coalition: coalition.to_string(),
                change: r.change,
                author,
                sent_by: Some(device.device_id.clone()),
                reason,
                at: now,
            });
        }
        self.metrics
            .changes_refused
            .fetch_add(named.len() as u64, Ordering::Relaxed);
        let first = named.first().map(|c| c.reason.clone()).unwrap_or_default();
        let text = format!(
            "change_refused: {} change(s) to document {doc_id} refused and kept for review: {first}",
            named.len()
        );
        let message = Message::Error(ErrorMessage {
            message: text,
            sender_id: Some(self.engine.peer_id().clone()),
            target_id: self.remote_peer(conn),
            refused: Some(RefusedChanges {
                document_id: doc_id,
                changes: named,
            }),
        });
        batch
            .out
            .push((conn, None, Outgoing::Frame(message.encode())));
    }

    /// Who an actor is, for the quarantine's records.
    fn author_text(&mut self, actor: &automerge::ActorId, sender: &DeviceAuth) -> Option<String> {
        let authors = self.authors.as_mut()?;
        match authors.owner(actor, sender) {
            Ok(Some(o)) => Some(format!("{} ({}), device {}", o.user, o.org, o.device_id)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot read who an actor is");
                None
            }
        }
    }

    /// Refuse a whole message the screen could not take apart: the peer gets an `error` and
    /// the connection is closed (a peer that sends such bytes is broken or hostile).
    fn refuse_message(&mut self, conn: ConnId, why: &str, batch: &mut Batch) {
        self.send_error(conn, format!("protocol_violation: {why}"), batch);
        self.close(conn, CLOSE_PROTOCOL, "protocol violation", batch);
    }

    /// May this connection's message about `doc_id` reach the engine? Answers
    /// `doc-unavailable` itself when not.
    fn admit(
        &mut self,
        conn: ConnId,
        doc_id: DocumentId,
        message: &Message,
        batch: &mut Batch,
    ) -> bool {
        let (coalitions, refused) = match self.conns.get(&conn) {
            Some(info) => (
                info.device.coalitions.clone(),
                info.refused.contains(&doc_id),
            ),
            None => return false,
        };
        let is_sync = matches!(message, Message::Sync(_) | Message::Request(_));
        let allowed = if refused {
            false
        } else if let Some(owner) = self.docs.provisional.get(&doc_id) {
            *owner == conn
        } else {
            match self.docs.ensure_loaded(&doc_id) {
                Lookup::Stored => match self.docs.meta.get(&doc_id).map(|m| m.coalition) {
                    Some(coalition) if coalitions.contains(&coalition) => {
                        // An organisation the coalition no longer lists reads nothing of it.
                        let org = self.conns.get(&conn).map(|c| c.device.org.clone());
                        org.is_some_and(|org| {
                            self.roles_of(&coalition)
                                .get(&org)
                                .is_some_and(|r| !r.is_empty())
                        })
                    }
                    _ => false,
                },
                Lookup::Failed => false,
                Lookup::Missing => Self::brings_data(message),
            }
        };
        if allowed {
            self.docs.touch(&doc_id);
            if let Some(info) = self.conns.get_mut(&conn) {
                info.docs.insert(doc_id);
            }
            return true;
        }
        if is_sync {
            self.send_unavailable(conn, doc_id, batch);
        }
        false
    }

    /// What a device that skips documents in step is behind on: each document of its
    /// coalitions whose heads differ from the shared heads of our sync state with its storage,
    /// or with no such state (it may hold the document all the same); the others are in step.
    /// All are loaded and count as synced by the connection (changes to any of them go to
    /// it). `None` when the store cannot tell: the device then offers everything.
    fn behind_of(&mut self, conn: ConnId, storage: &StorageId) -> Option<Listing> {
        let (coalitions, org) = match self.conns.get(&conn) {
            Some(info) => (info.device.coalitions.clone(), info.device.org.clone()),
            None => return None,
        };
        let mut listing = Listing::default();
        for coalition in coalitions {
            // An organisation the coalition no longer lists reads nothing of it.
            let member = self
                .roles_of(&coalition)
                .get(&org)
                .is_some_and(|r| !r.is_empty());
            if !member {
                continue;
            }
            let listed = match self.docs.store.doc_infos(&coalition) {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(%coalition, %error, "cannot list a coalition's documents");
                    return None;
                }
            };
            for (doc_id, _, _) in listed {
                if self.docs.ensure_loaded(&doc_id) != Lookup::Stored {
                    // Not readable here now; the device's own offer will hear the same.
                    continue;
                }
                // A state that does not decode counts as none (the document is listed and
                // synced afresh); the engine reports it when it loads it for the connection.
                let shared = match self.docs.store.sync_state(&doc_id, storage.as_str()) {
                    Ok(Some(bytes)) => automerge::sync::State::decode(&bytes)
                        .map(|s| s.shared_heads)
                        .ok(),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%doc_id, %error, "cannot read a sync state");
                        return None;
                    }
                };
                let Some(loaded) = self.docs.loaded.get_mut(&doc_id) else {
                    continue;
                };
                let mut heads = loaded.doc.get_heads();
                heads.sort();
                let in_step = shared.is_some_and(|mut shared| {
                    shared.sort();
                    shared == heads
                });
                if in_step {
                    listing.in_step.push(doc_id);
                } else {
                    listing.behind.push(doc_id);
                }
            }
        }
        let all: Vec<DocumentId> = listing
            .behind
            .iter()
            .chain(&listing.in_step)
            .copied()
            .collect();
        for doc_id in &all {
            self.docs.touch(doc_id);
        }
        if let Some(info) = self.conns.get_mut(&conn) {
            info.docs.extend(all);
        }
        Some(listing)
    }

    /// Unknown here: only a peer that brings data may create a document (the engine then asks
    /// us with `DocumentRequested`); a plain request is answered like a missing document.
    fn brings_data(message: &Message) -> bool {
        match message {
            Message::Sync(m) | Message::Request(m) => {
                automerge::sync::Message::decode(&m.data).is_ok_and(|s| !s.heads.is_empty())
            }
            _ => false,
        }
    }

    fn send_unavailable(&mut self, conn: ConnId, doc_id: DocumentId, batch: &mut Batch) {
        if let Some(target_id) = self.remote_peer(conn) {
            batch.out.push((
                conn,
                Some(doc_id),
                Outgoing::Frame(
                    Message::DocUnavailable(DocUnavailableMessage {
                        sender_id: self.engine.peer_id().clone(),
                        target_id,
                        document_id: doc_id,
                    })
                    .encode(),
                ),
            ));
        }
    }

    fn perform(&mut self, actions: Vec<Action>, batch: &mut Batch) {
        for action in actions {
            match action {
                Action::Send { conn, message } => {
                    let doc = message.document_id();
                    if doc.is_some_and(|d| batch.refused.contains(&d)) {
                        continue;
                    }
                    batch
                        .out
                        .push((conn, doc, Outgoing::Frame(message.encode())));
                }
                Action::Disconnect { conn, reason } => {
                    tracing::info!(%conn, ?reason, "engine closed the connection");
                    let (code, text) = close_for(&reason);
                    if let Some(info) = self.conns.get_mut(&conn) {
                        if !info.closing {
                            info.closing = true;
                            batch.out.push((
                                conn,
                                None,
                                Outgoing::Close {
                                    code,
                                    reason: text.to_string(),
                                },
                            ));
                        }
                    }
                }
                Action::PeerConnected {
                    conn,
                    peer_id,
                    metadata,
                    ..
                } => {
                    tracing::info!(%conn, %peer_id, storage_id = ?metadata.storage_id, "peer connected");
                }
                Action::DocumentChanged { doc_id } => self.on_changed(doc_id, batch),
                Action::PersistSyncState {
                    doc_id,
                    peer_storage_id,
                    bytes,
                } => {
                    if !batch.refused.contains(&doc_id)
                        && !self.docs.provisional.contains_key(&doc_id)
                    {
                        batch
                            .sync_states
                            .insert((doc_id, peer_storage_id.as_str().to_string()), bytes);
                    }
                }
                Action::DocumentRequested {
                    doc_id,
                    conn,
                    peer_has_data,
                } => {
                    let lookup = self.docs.ensure_loaded(&doc_id);
                    let more = if lookup == Lookup::Stored {
                        self.engine.doc_loaded(doc_id, &mut self.docs)
                    } else if lookup == Lookup::Missing
                        && peer_has_data
                        && self.conns.contains_key(&conn)
                    {
                        // A new document: held for this connection until its content shows
                        // where it belongs (see `on_changed`).
                        self.docs.clock += 1;
                        self.docs.loaded.insert(
                            doc_id,
                            Loaded {
                                doc: AutoCommit::new(),
                                last_use: self.docs.clock,
                            },
                        );
                        self.docs.provisional.insert(doc_id, conn);
                        self.engine.doc_loaded(doc_id, &mut self.docs)
                    } else {
                        self.engine.doc_unavailable(doc_id)
                    };
                    self.perform(more, batch);
                }
                Action::DocumentUnavailable { doc_id } => {
                    tracing::debug!(%doc_id, "document unavailable from peers");
                }
                Action::ListBehind { conn, storage_id } => {
                    let behind = self.behind_of(conn, &storage_id);
                    let more = self.engine.answer_join(conn, behind, &mut self.docs);
                    self.perform(more, batch);
                }
                Action::Ephemeral { .. } => {}
                Action::Error { conn, error } => {
                    tracing::warn!(conn = ?conn, error = %error, source = ?std::error::Error::source(&error), "sync error");
                }
                other => tracing::debug!(?other, "unhandled engine action"),
            }
        }
    }

    /// Merge what other processes wrote to the store (an `admin invite` adding a member while
    /// the relay runs) into the documents in memory, and send it to the peers syncing them.
    fn pick_up_external_writes(&mut self, batch: &mut Batch) {
        let written = match self.docs.store.external_writes() {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(%error, "cannot look for writes by other processes");
                return;
            }
        };
        for doc_id in written {
            // A manifest written elsewhere may change who is a member, loaded or not.
            self.members.remove(&doc_id);
            if !self.docs.loaded.contains_key(&doc_id) {
                continue; // loaded fresh from the store when next needed
            }
            let fresh = match self.docs.store.load_doc(&doc_id) {
                Ok(Some(fresh)) => fresh,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%doc_id, %error, "cannot reload a document written by another process");
                    continue;
                }
            };
            let Some(loaded) = self.docs.loaded.get_mut(&doc_id) else {
                continue;
            };
            let before = loaded.doc.get_heads();
            let mut fresh_doc = fresh.doc;
            if let Err(error) = loaded.doc.merge(&mut fresh_doc) {
                tracing::warn!(%doc_id, %error, "cannot merge a document written by another process");
                continue;
            }
            if loaded.doc.get_heads() != before {
                tracing::info!(%doc_id, "picked up changes written by another process");
                self.note_manifest_change(doc_id, batch);
                let actions = self.engine.local_change(doc_id, &mut self.docs);
                self.perform(actions, batch);
            }
        }
    }

    /// How many documents a connection has pushed that are waiting for their description.
    fn provisional_of(&self, conn: ConnId) -> usize {
        self.docs
            .provisional
            .values()
            .filter(|c| **c == conn)
            .count()
    }

    /// A peer changed a document: decide on a provisional one, and mark it for saving.
    fn on_changed(&mut self, doc_id: DocumentId, batch: &mut Batch) {
        let Some(owner) = self.docs.provisional.get(&doc_id).copied() else {
            batch.changed.insert(doc_id);
            self.note_manifest_change(doc_id, batch);
            return;
        };
        let device = self.conns.get(&owner).map(|c| c.device.clone());
        let verdict = match (self.docs.loaded.get(&doc_id), device) {
            (Some(l), Some(device)) => match describe(&l.doc) {
                Ok((kind, doc_owner, coalition_text)) => match coalition_text.parse::<DocumentId>()
                {
                    Ok(coalition) if kind == DocKind::Manifest => Err(format!(
                        "a new manifest is a new coalition (coalition {coalition})"
                    )),
                    Ok(coalition) if device.coalitions.contains(&coalition) => Ok(DocMeta {
                        coalition,
                        coalition_text,
                        kind,
                        owner: doc_owner,
                    }),
                    Ok(coalition) => {
                        Err(format!("device is not a member of coalition {coalition}"))
                    }
                    Err(_) => Err(format!("bad coalition id `{coalition_text}`")),
                },
                // A stock client's `repo.create()` syncs an empty change before the app
                // writes the description: wait for it (a bounded number per connection),
                // without storing or refusing anything yet.
                Err(_) if undescribed(&l.doc) && self.provisional_of(owner) <= MAX_UNDESCRIBED => {
                    return;
                }
                Err(error) => Err(error.to_string()),
            },
            _ => Err("connection gone".into()),
        };
        let verdict = match (
            verdict,
            self.conns.get(&owner).map(|c| person_of(&c.device)),
        ) {
            (Ok(meta), Some(person)) => match self.charge(&person, 1, 0, batch) {
                Ok(()) => Ok(meta),
                Err(hit) => {
                    self.send_error(owner, hit.to_string(), batch);
                    self.metrics.limits_hit.fetch_add(1, Ordering::Relaxed);
                    Err(hit.to_string())
                }
            },
            (verdict, _) => verdict,
        };
        match verdict {
            Ok(meta) => {
                tracing::info!(%doc_id, coalition = %meta.coalition, kind = %meta.kind, "accepted a new document");
                self.docs.provisional.remove(&doc_id);
                self.docs.meta.insert(doc_id, meta);
                batch.changed.insert(doc_id);
            }
            Err(why) => {
                tracing::warn!(%doc_id, conn = %owner, %why, "refused a new document");
                self.metrics
                    .documents_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.docs.provisional.remove(&doc_id);
                self.engine.forget_doc(doc_id);
                self.docs.unload(&doc_id);
                batch.refused.insert(doc_id);
                if let Some(info) = self.conns.get_mut(&owner) {
                    info.refused.insert(doc_id);
                    info.docs.remove(&doc_id);
                }
                self.send_unavailable(owner, doc_id, batch);
            }
        }
    }

    /// A document changed: if it is a manifest, its coalition's memberships are read again
    /// after the batch (see [`Hub::recheck_members`]).
    fn note_manifest_change(&mut self, doc_id: DocumentId, batch: &mut Batch) {
        if self
            .docs
            .meta
            .get(&doc_id)
            .is_some_and(|m| m.kind == DocKind::Manifest)
        {
            self.members.remove(&doc_id);
            batch.manifests.insert(doc_id);
        }
    }

    /// A coalition's manifest changed: a connection whose organisation is no longer a member
    /// is closed at once (its device keeps its data; the relay refuses it from now on).
    fn recheck_members(&mut self, manifests: &BTreeSet<DocumentId>, batch: &mut Batch) {
        for coalition in manifests {
            let roles = self.roles_of(coalition).clone();
            let gone: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    !c.closing
                        && c.device.coalitions.contains(coalition)
                        && roles.get(&c.device.org).is_none_or(Vec::is_empty)
                })
                .map(|(conn, _)| *conn)
                .collect();
            for conn in gone {
                tracing::info!(%conn, %coalition, "closing the connection of an organisation no longer in the coalition");
                self.send_error(
                    conn,
                    format!("not_a_member: the organisation is no longer a member of coalition {coalition}"),
                    batch,
                );
                self.close(
                    conn,
                    CLOSE_POLICY,
                    "no longer a member of the coalition",
                    batch,
                );
            }
        }
    }

    /// A connection hit a limit: it is told which, and closed; everyone else goes on.
    fn limit_hit(&mut self, conn: ConnId, hit: LimitHit, batch: &mut Batch) {
        self.metrics.limits_hit.fetch_add(1, Ordering::Relaxed);
        let device = self
            .conns
            .get(&conn)
            .map(|c| c.device.device_id.clone())
            .unwrap_or_default();
        tracing::warn!(%conn, %device, limit = %hit, "a connection hit a limit; closing it");
        self.send_error(conn, hit.to_string(), batch);
        self.close(conn, hit.close_code(), hit.close_reason(), batch);
    }

    /// What the store holds from a person, this batch included.
    fn usage_of(&mut self, person: &str) -> (i64, i64) {
        if let Some(u) = self.usage.get(person) {
            return *u;
        }
        let stored = match self.docs.store.usage(person) {
            Ok(u) => u,
            Err(error) => {
                // Counting from zero only loosens a quota until the next restart.
                tracing::warn!(%error, %person, "cannot read a person's usage");
                (0, 0)
            }
        };
        self.usage.insert(person.to_string(), stored);
        stored
    }

    /// Count `documents` and `bytes` more for `person`, or say which quota that would break.
    fn charge(
        &mut self,
        person: &str,
        documents: i64,
        bytes: i64,
        batch: &mut Batch,
    ) -> Result<(), LimitHit> {
        let (d, b) = self.usage_of(person);
        if documents > 0 && d + documents > self.limits.max_documents_per_person {
            return Err(LimitHit::Documents {
                person: person.to_string(),
                used: d,
                max: self.limits.max_documents_per_person,
            });
        }
        if bytes > 0 && b + bytes > self.limits.max_bytes_per_person {
            return Err(LimitHit::StoredBytes {
                person: person.to_string(),
                used: b,
                max: self.limits.max_bytes_per_person,
            });
        }
        self.usage
            .insert(person.to_string(), (d + documents, b + bytes));
        let entry = batch.usage.entry(person.to_string()).or_insert(Usage {
            person: person.to_string(),
            documents: 0,
            bytes: 0,
        });
        entry.documents += documents;
        entry.bytes += bytes;
        Ok(())
    }

    fn send_error(&mut self, conn: ConnId, text: String, batch: &mut Batch) {
        let message = Message::Error(ErrorMessage {
            message: text,
            sender_id: Some(self.engine.peer_id().clone()),
            target_id: self.remote_peer(conn),
            refused: None,
        });
        batch
            .out
            .push((conn, None, Outgoing::Frame(message.encode())));
    }

    /// Hand what the batch changed and the peers' sync states to the store writer (one
    /// transaction, see [`writer`]), and queue what the batch holds back until they are
    /// durable.
    fn commit(&mut self, mut batch: Batch) {
        let counters = self.engine.counters();
        self.metrics
            .general_messages
            .store(counters.general_messages, Ordering::Relaxed);
        self.metrics
            .general_receives
            .store(counters.general_receives, Ordering::Relaxed);
        let manifests = std::mem::take(&mut batch.manifests);
        if !manifests.is_empty() {
            self.recheck_members(&manifests, &mut batch);
        }
        let usage: Vec<Usage> = std::mem::take(&mut batch.usage).into_values().collect();
        let mut unsent = Unsent {
            seq: None,
            epoch: self.epoch,
            result: Some(Ok(())),
            out: std::mem::take(&mut batch.out),
            changed: std::mem::take(&mut batch.changed),
            lost: BTreeSet::new(),
            documents: 0,
            sources: std::mem::take(&mut batch.sources),
            replies: std::mem::take(&mut batch.replies),
            accepted: std::mem::take(&mut batch.accepted),
        };
        if !unsent.changed.is_empty()
            || !batch.sync_states.is_empty()
            || !batch.held.is_empty()
            || !usage.is_empty()
        {
            let Docs {
                store,
                loaded,
                meta,
                ..
            } = &mut self.docs;
            let records: Vec<DocRecord<'_>> = loaded
                .iter_mut()
                .filter(|(id, _)| unsent.changed.contains(id))
                .filter_map(|(id, l)| {
                    let m = meta.get(id)?;
                    Some(DocRecord {
                        id: *id,
                        coalition: &m.coalition_text,
                        kind: m.kind,
                        owner: m.owner.as_deref(),
                        doc: &mut l.doc,
                    })
                })
                .collect();
            let states = batch
                .sync_states
                .into_iter()
                .map(|((doc_id, peer), bytes)| (doc_id, peer, bytes))
                .collect();
            let prepared = store.prepare_batch(records, states, batch.held, usage);
            // The next batch writes only what comes after this one; if this one fails, the
            // documents are forgotten (see `finish`).
            store.assume_saved(&prepared);
            unsent.documents = prepared.documents() as u64;
            let seq = self.next_seq;
            self.next_seq += 1;
            unsent.seq = Some(seq);
            unsent.result = None;
            let job = Job {
                seq,
                epoch: self.epoch,
                batch: prepared,
            };
            if self.writer.send(job).is_err() {
                unsent.result = Some(Err("the store writer has stopped".into()));
            }
            for id in &unsent.changed {
                *self.saving.entry(*id).or_default() += 1;
            }
        }
        self.unsent.push_back(unsent);
        self.release();
    }

    /// Take the writer's results, and send what every batch that is durable (and every batch
    /// before it) held back.
    fn release(&mut self) {
        loop {
            match self.writer.done.try_recv() {
                Ok(done) => self.on_done(done),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.writer_gone();
                    break;
                }
            }
        }
        while self.unsent.front().is_some_and(|u| u.result.is_some()) {
            if let Some(unsent) = self.unsent.pop_front() {
                self.finish(unsent);
            }
        }
    }

    /// Wait until every batch handed to the writer is durable (or failed), and release them.
    fn flush(&mut self) {
        self.release();
        while !self.unsent.is_empty() {
            match self.writer.done.recv() {
                Ok(done) => self.on_done(done),
                Err(_) => self.writer_gone(),
            }
            self.release();
        }
    }

    /// The writer thread ended (it only does when the hub stops it, or by a bug): what it had
    /// not answered was not written.
    fn writer_gone(&mut self) {
        for u in self.unsent.iter_mut().filter(|u| u.result.is_none()) {
            u.result = Some(Err("the store writer has stopped".into()));
        }
    }

    fn on_done(&mut self, done: Done) {
        let Some(unsent) = self.unsent.iter_mut().find(|u| u.seq == Some(done.seq)) else {
            return; // already given up with an earlier failure
        };
        match done.result {
            Ok(chunks) => {
                self.metrics.observe_write(done.took);
                self.metrics
                    .documents_saved
                    .fetch_add(unsent.documents, Ordering::Relaxed);
                self.docs.store.own_writes(&chunks);
                unsent.result = Some(Ok(()));
            }
            Err(error) => unsent.result = Some(Err(error)),
        }
    }

    /// Send what a batch held back, or, if its writes failed, drop what reflects them.
    fn finish(&mut self, unsent: Unsent) {
        let Unsent {
            epoch,
            result,
            mut out,
            changed,
            lost,
            sources,
            replies,
            accepted,
            ..
        } = unsent;
        for id in &changed {
            if let Some(n) = self.saving.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.saving.remove(id);
                }
            }
        }
        let saved = match result {
            Some(Ok(())) => true,
            Some(Err(error)) => {
                tracing::error!(%error, "saving documents failed; nothing that reflects them is sent");
                if epoch == self.epoch {
                    // Every later batch of this epoch builds on this one: give them up too
                    // (the writer does not write them), and start afresh.
                    self.epoch += 1;
                    for u in self.unsent.iter_mut().filter(|u| u.epoch == epoch) {
                        u.result = Some(Err("a batch before it failed to be saved".into()));
                        u.lost.extend(changed.iter().copied());
                    }
                }
                false
            }
            None => false,
        };
        if !saved {
            // What this batch counted against quotas was not stored either.
            self.usage.clear();
            // The changes are only in memory: forget them (peers still have them and will
            // send them again), and drop every frame about them. Connections that lose frames
            // are closed, so that they resync from a clean state when they come back.
            for id in &changed {
                self.engine.forget_doc(*id);
                self.docs.unload(id);
            }
            let mut cut = BTreeSet::new();
            out.retain(|(conn, doc, _)| {
                let keep = !doc.is_some_and(|d| changed.contains(&d) || lost.contains(&d));
                if !keep {
                    cut.insert(*conn);
                }
                keep
            });
            cut.extend(sources.iter().copied());
            let mut tail = Batch::default();
            for conn in cut {
                self.close(
                    conn,
                    CLOSE_INTERNAL,
                    "relay storage failure; retry later",
                    &mut tail,
                );
            }
            out.extend(tail.out);
        }
        if let (true, Some(feed)) = (saved, &self.feed) {
            let coalitions: BTreeSet<DocumentId> = changed
                .iter()
                .filter_map(|id| self.docs.meta.get(id).map(|m| m.coalition))
                .collect();
            for coalition in coalitions {
                // No receiver (no page open) is not an error.
                let _ = feed.send(Feed::Changed { coalition });
            }
        }
        // Counted before the frames leave: a peer that has its documents sees them loaded.
        self.metrics
            .documents_loaded
            .store(self.docs.loaded.len() as i64, Ordering::Relaxed);
        self.dispatch(out);
        let now = chrono::Utc::now().timestamp();
        for Accepted { ids, by, reply } in accepted {
            let answer = if !saved {
                Err(AppError::internal(anyhow::anyhow!(
                    "saving the accepted change failed"
                )))
            } else {
                let mut result = Ok(ids.clone());
                for n in &ids {
                    if let Err(e) = self.docs.store.decide_held(
                        *n,
                        coalition_core::store::HeldStatus::Accepted,
                        &by,
                        now,
                    ) {
                        result = Err(AppError::internal(e));
                    }
                }
                result
            };
            let _ = reply.send(answer);
        }
        for (reply, hash) in replies {
            let _ = reply.send(if saved {
                Ok(hash)
            } else {
                Err(AppError::internal(anyhow::anyhow!(
                    "saving the resolution failed"
                )))
            });
        }
    }

    fn dispatch(&mut self, out: Vec<(ConnId, Option<DocumentId>, Outgoing)>) {
        let mut overflowing = Vec::new();
        for (conn, _, item) in out {
            let Some(info) = self.conns.get(&conn) else {
                continue;
            };
            let len = match &item {
                Outgoing::Frame(b) => Some(b.len() as u64),
                Outgoing::Close { .. } => None,
            };
            match info.outbox.try_send(item) {
                Ok(()) => {
                    if let Some(len) = len {
                        self.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
                        self.metrics.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    if queued(&info.outbox) > HOLD_AT && self.held.insert(conn) {
                        self.engine.hold(conn);
                        self.metrics
                            .connections_held
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => overflowing.push(conn),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for conn in overflowing {
            // A peer that does not read its frames would make us buffer without bound. Drop
            // it: its socket task sees the outbox gone and closes; it resyncs on reconnect.
            tracing::warn!(%conn, "outbox full; dropping a slow connection");
            let mut tail = Batch::default();
            self.close(conn, CLOSE_INTERNAL, "too slow", &mut tail);
            if let Some(info) = self.conns.get_mut(&conn) {
                let (closed, _) = mpsc::channel(1);
                info.outbox = closed;
            }
        }
    }

    /// Releases the held connections whose outboxes drained (see the module docs).
    fn release_drained(&mut self, batch: &mut Batch) {
        let drained: Vec<ConnId> = self
            .held
            .iter()
            .filter(|conn| {
                self.conns
                    .get(conn)
                    .is_none_or(|info| queued(&info.outbox) <= RELEASE_AT)
            })
            .copied()
            .collect();
        for conn in drained {
            self.held.remove(&conn);
            if self.conns.get(&conn).is_none_or(|info| info.closing) {
                continue;
            }
            let actions = self.engine.release(conn, &mut self.docs);
            self.perform(actions, batch);
        }
    }

    /// Unload the least recently used documents that no open connection syncs.
    fn evict(&mut self) {
        let excess = self.docs.loaded.len().saturating_sub(self.max_docs);
        if excess == 0 {
            return;
        }
        let busy: HashSet<DocumentId> = self
            .conns
            .values()
            .flat_map(|c| c.docs.iter().copied())
            .collect();
        let mut idle: Vec<(u64, DocumentId)> = self
            .docs
            .loaded
            .iter()
            .filter(|(id, _)| {
                !busy.contains(id)
                    && !self.docs.provisional.contains_key(id)
                    && !self.saving.contains_key(id)
            })
            .map(|(id, l)| (l.last_use, *id))
            .collect();
        idle.sort_unstable();
        for (_, id) in idle.into_iter().take(excess) {
            self.engine.forget_doc(id);
            self.docs.unload(&id);
            // What the screen remembered of it (refused hashes, waiting changes) goes too: no
            // connection syncs it, and a change sent again is judged again.
            self.pending.remove(&id);
            self.metrics
                .documents_evicted
                .fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .documents_loaded
            .store(self.docs.loaded.len() as i64, Ordering::Relaxed);
    }

    fn close_all(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        let mut batch = Batch::default();
        for conn in conns {
            self.close(conn, CLOSE_GOING_AWAY, "relay shutting down", &mut batch);
        }
        self.dispatch(batch.out);
    }
}

/// How the quotas name a person.
fn person_of(device: &DeviceAuth) -> String {
    format!("{} ({})", device.user, device.org)
}

/// Documents without a description one connection may hold open at once.
const MAX_UNDESCRIBED: usize = 16;

/// Whether a document names neither its kind nor its coalition yet (as opposed to naming
/// them wrongly).
fn undescribed(doc: &automerge::AutoCommit) -> bool {
    use automerge::ReadDoc;
    [
        coalition_core::coalition::META_KIND,
        coalition_core::coalition::META_COALITION,
    ]
    .iter()
    .all(|k| doc.get(automerge::ROOT, *k).ok().flatten().is_none())
}
