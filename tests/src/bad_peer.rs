//! What a bad peer sends, and an in-process relay hub to send it to.
//!
//! The fuzz targets (`fuzz/`), the test that replays their corpus on every run
//! (`tests/integration/fuzz_corpus.rs`) and the hostile-load benchmark share this code, so that
//! an input found by the fuzzer means the same thing everywhere:
//!
//! - a **session file** is a sequence of frames, each a little-endian `u32` length and that
//!   many bytes (the last frame may be cut short: it then holds what is left). A session is
//!   played on one connection after a valid `join`;
//! - the **fixtures** are two small coalitions kept as export files (`fuzz/fixtures/`): ours,
//!   which the rig's device belongs to, and another one it may not see. They are files rather
//!   than built on the fly because document ids and change hashes are random at creation, and
//!   the committed seed sessions name them;
//! - [`HubRig`] runs a real [`coalition_server::hub`] on a fresh copy of a store holding the
//!   fixtures, and checks after every session what must hold whatever a peer sent: the hub
//!   thread is alive, caught no panic, sent only well-formed frames, and still serves an honest
//!   peer its coalition.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use coalition_core::coalition::{META_COALITION, META_KIND};
use coalition_core::model::{Comment, CommentKind, DocKind};
use coalition_core::store::Store;
use coalition_core::sync::message::{
    DocUnavailableMessage, EphemeralMessage, JoinMessage, LeaveMessage, PeerMessage, RemoteHeads,
    RemoteHeadsChangedMessage, RemoteSubscriptionChangeMessage, SyncMessage,
};
use coalition_core::sync::{
    ConnId, DocumentId, EngineConfig, Message, PeerId, PeerMetadata, StorageId,
};
use coalition_core::{Coalition, Edit, Identity};
use coalition_server::auth::DeviceAuth;
use coalition_server::hub::{self, Event, HubConfig, HubHandle, Outgoing, OUTBOX_CAPACITY};
use coalition_server::metrics::Metrics;
use tokio::sync::mpsc;

/// At most this many frames of a session file are played; the rest is ignored, so that one
/// input cannot take unbounded time.
pub const MAX_FRAMES: usize = 64;

/// The relay's peer id in the rig.
pub const RELAY_PEER: &str = "relay";
/// The peer id a session's connection joins with.
pub const SESSION_PEER: &str = "peer-under-test";
/// The peer id of the honest peer that checks the hub after every session.
pub const HONEST_PEER: &str = "honest-peer";

/// The document a session's probe asks for: nobody has it.
pub const PROBE_DOC: DocumentId = DocumentId::from_bytes([0x9e; 16]);

/// How long the rig waits for the hub to answer a session.
const HUB_TIMEOUT: Duration = Duration::from_secs(20);

/// The frames of one session, in order.
pub type Session = Vec<Vec<u8>>;

/// The frames of a session file (see the module documentation).
pub fn split_frames(input: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = input;
    while !rest.is_empty() && frames.len() < MAX_FRAMES {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            frames.push(rest);
            break;
        };
        let len = u32::from_le_bytes(*len) as usize;
        let (frame, tail) = tail.split_at(len.min(tail.len()));
        frames.push(frame);
        rest = tail;
    }
    frames
}

/// A session file holding these frames.
pub fn join_frames<F: AsRef<[u8]>>(frames: &[F]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let frame = frame.as_ref();
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// `fuzz/fixtures` in the source tree.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fixtures")
}

/// `fuzz/corpus` in the source tree.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// The coordinator of our fixture coalition, who the rig's device belongs to.
pub fn coordinator() -> Identity {
    Identity {
        user: "amra".into(),
        org: "MCA-BA".into(),
        device: "laptop".into(),
        actor: "a1".repeat(16),
    }
}

/// The two fixture coalitions.
pub struct Fixtures {
    /// The coalition the rig's device belongs to.
    pub ours: Coalition,
    /// A coalition it may not see.
    pub other: Coalition,
}

const OURS_FILE: &str = "ours.coalition";
const OTHER_FILE: &str = "other.coalition";

impl Fixtures {
    /// New coalitions with random ids (only to make the fixture files once).
    pub fn create() -> Result<Fixtures> {
        use coalition_core::model::{CoalitionInfo, Member, OrgKind, TreatyStatus};
        let make = |who: &Identity, state: &str, name: &str| -> Result<Coalition> {
            let info = CoalitionInfo {
                name: name.into(),
                affected_state: state.into(),
                treaty_status: TreatyStatus::StateParty,
                entry_into_force: None,
            };
            let creator = Member {
                org: who.org.clone(),
                name: format!("{} ministry", who.org),
                kind: OrgKind::AffectedState,
                roles: Default::default(),
                country: None,
            };
            Ok(Coalition::create(who, info, creator, 1_700_000_000)?)
        };
        let other_coordinator = Identity {
            user: "arben".into(),
            org: "MoD-XK".into(),
            device: "desk".into(),
            actor: "b2".repeat(16),
        };
        Ok(Fixtures {
            ours: make(&coordinator(), "BA", "BiH CCM coalition")?,
            other: make(&other_coordinator, "XK", "Kosovo coalition")?,
        })
    }

    /// Write both as export files into `dir`.
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(OURS_FILE),
            coalition_core::export::encode(&mut self.ours),
        )?;
        std::fs::write(
            dir.join(OTHER_FILE),
            coalition_core::export::encode(&mut self.other),
        )?;
        Ok(())
    }

    /// Read them from `dir`.
    pub fn load(dir: &Path) -> Result<Fixtures> {
        let read = |file: &str| -> Result<Coalition> {
            let path = dir.join(file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let (id, docs) = coalition_core::export::decode(&bytes)
                .with_context(|| format!("decoding {}", path.display()))?;
            Ok(Coalition::from_docs(id, docs)?)
        };
        Ok(Fixtures {
            ours: read(OURS_FILE)?,
            other: read(OTHER_FILE)?,
        })
    }

    /// The id of a document of ours of this kind.
    pub fn ours_doc(&self, kind: DocKind) -> Result<DocumentId> {
        Ok(self
            .ours
            .find_doc(kind, None)
            .with_context(|| format!("no {kind} document in the fixture"))?
            .id)
    }

    /// A store directory holding both coalitions (the template every rig copies).
    pub fn store_template(&mut self, dir: &Path) -> Result<()> {
        let mut store = Store::open(dir)?;
        store.save_all(&mut self.ours)?;
        store.save_all(&mut self.other)?;
        store.close()?;
        Ok(())
    }
}

/// A relay hub running in this process on a private copy of a store.
pub struct HubRig {
    hub: Option<HubHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
    device: Arc<DeviceAuth>,
    runtime: tokio::runtime::Runtime,
    next_conn: u64,
    dir: PathBuf,
    /// Our coalition's manifest id.
    pub ours: DocumentId,
}

/// A connection of a [`HubRig`] that the caller drives.
pub struct RigConn {
    /// Its id.
    pub conn: ConnId,
    from_hub: mpsc::Receiver<Outgoing>,
}

impl RigConn {
    /// Frames the hub queued for it and it has not read.
    pub fn queued(&self) -> usize {
        self.from_hub.len()
    }
}

/// Files of a store directory the rig copies (SQLite's side files exist only while open).
const STORE_FILES: [&str; 1] = ["coalition.db"];

impl HubRig {
    /// Start a hub on a fresh copy of the store in `template` (see
    /// [`Fixtures::store_template`]); its device is our coalition's coordinator.
    pub fn start(template: &Path, ours: DocumentId) -> Result<HubRig> {
        static RIGS: AtomicU64 = AtomicU64::new(0);
        let dir = scratch_dir().join(format!(
            "hub-rig-{}-{}",
            std::process::id(),
            RIGS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        for file in STORE_FILES {
            std::fs::copy(template.join(file), dir.join(file)).with_context(|| {
                format!("copying the template store from {}", template.display())
            })?;
        }
        let store = Store::open(&dir)?;
        let metrics = Arc::new(Metrics::default());
        let mut engine = EngineConfig::new(PeerId::from(RELAY_PEER));
        engine.metadata = PeerMetadata {
            storage_id: Some(StorageId::from("relay-storage")),
            is_ephemeral: false,
        };
        let (hub, thread) = hub::spawn(
            HubConfig {
                engine,
                max_docs: 100,
                feed: None,
                limits: coalition_server::limits::Limits::default(),
            },
            store,
            metrics.clone(),
            None,
        )?;
        let who = coordinator();
        let device = Arc::new(DeviceAuth {
            device_id: "device-under-test".into(),
            user: who.user,
            org: who.org,
            role: "coordinator".into(),
            coalitions: [ours].into(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        Ok(HubRig {
            hub: Some(hub),
            thread: Some(thread),
            metrics,
            device,
            runtime,
            next_conn: 1,
            dir,
            ours,
        })
    }

    /// Play a session on a new connection: a valid `join` as [`SESSION_PEER`], then `frames`,
    /// then a probe (a `request` for [`PROBE_DOC`], which does not exist); once the probe is
    /// answered or the hub closed the connection, the socket closes. Returns every message the
    /// hub sent before the probe's answer, or an error if the hub broke one of the rules in the
    /// module documentation.
    ///
    /// The probe is what tells the session is over: the hub answers in order, and sends
    /// nothing to a connection that closed before its batch was saved.
    pub fn session(&mut self, frames: &[&[u8]]) -> Result<Vec<Message>> {
        let mut all = vec![join(SESSION_PEER)];
        all.extend(frames.iter().map(|f| f.to_vec()));
        all.push(sync_frame(
            "request",
            PROBE_DOC,
            first_message(&AutoCommit::new())?,
        ));
        let mut out = self.exchange(
            all,
            |m| matches!(m, Message::DocUnavailable(d) if d.document_id == PROBE_DOC),
        )?;
        if matches!(out.last(), Some(Message::DocUnavailable(d)) if d.document_id == PROBE_DOC) {
            out.pop();
        }
        self.check()?;
        Ok(out)
    }

    /// Whether an honest peer still gets our coalition's manifest: it joins, requests the
    /// manifest, and must receive `peer` and then a `sync` of it addressed to itself.
    pub fn serves_honest_peer(&mut self) -> Result<()> {
        let request = Message::Request(SyncMessage {
            sender_id: PeerId::from(HONEST_PEER),
            target_id: PeerId::from(RELAY_PEER),
            document_id: self.ours,
            data: first_message(&AutoCommit::new())?,
        })
        .encode();
        let ours = self.ours;
        let served = move |m: &Message| {
            matches!(m, Message::Sync(s) if s.document_id == ours
                && s.target_id.as_str() == HONEST_PEER
                && automerge::sync::Message::decode(&s.data).is_ok_and(|d| !d.heads.is_empty()))
        };
        let out = self.exchange(vec![join(HONEST_PEER), request], served)?;
        let greeted =
            matches!(out.first(), Some(Message::Peer(p)) if p.target_id.as_str() == HONEST_PEER);
        ensure!(
            greeted && out.last().is_some_and(served),
            "the hub no longer serves an honest peer its coalition; it answered {out:?}"
        );
        self.check()
    }

    /// The heads of a document in the rig's store (empty if it is not stored).
    pub fn stored_heads(&self, doc: &DocumentId) -> Result<Vec<automerge::ChangeHash>> {
        let mut store = Store::open(&self.dir)?;
        Ok(store
            .load_doc(doc)?
            .map(|mut d| d.doc.get_heads())
            .unwrap_or_default())
    }

    /// Open a connection and send `frames`; collect what the hub sends until `done` holds for a
    /// message or the hub closes the connection; then close the socket and wait until the hub
    /// let go of the connection.
    fn exchange(
        &mut self,
        frames: Vec<Vec<u8>>,
        done: impl Fn(&Message) -> bool,
    ) -> Result<Vec<Message>> {
        let hub = self.hub.clone().context("the hub was stopped")?;
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let device = self.device.clone();
        self.runtime.block_on(async move {
            let (outbox, mut from_hub) = mpsc::channel(OUTBOX_CAPACITY);
            let mut events = vec![Event::Open {
                conn,
                device,
                outbox,
            }];
            events.extend(frames.into_iter().map(|bytes| Event::Frame { conn, bytes }));
            let mut out = Vec::new();
            let sending = async {
                for event in events {
                    if !hub.send(event).await {
                        return false;
                    }
                }
                true
            };
            // Read while sending: the hub drops a connection whose outbox fills up.
            let receiving = async {
                while let Some(item) = from_hub.recv().await {
                    let Outgoing::Frame(bytes) = item else {
                        break;
                    };
                    let message = Message::decode(&bytes)
                        .with_context(|| format!("the hub sent a malformed frame {bytes:02x?}"))?;
                    let end = done(&message);
                    out.push(message);
                    if end {
                        break;
                    }
                }
                anyhow::Ok(())
            };
            let (sent, received) =
                tokio::time::timeout(HUB_TIMEOUT, async { tokio::join!(sending, receiving) })
                    .await
                    .context("the hub neither answered nor closed the connection in time")?;
            ensure!(sent, "the hub stopped taking events");
            received?;
            ensure!(
                hub.send(Event::Closed { conn }).await,
                "the hub stopped taking events"
            );
            tokio::time::timeout(HUB_TIMEOUT, async {
                while from_hub.recv().await.is_some() {}
            })
            .await
            .context("the hub did not let go of a closed connection")?;
            Ok(out)
        })
    }

    /// Opens a connection the caller drives frame by frame ([`Self::send`], [`Self::recv`]),
    /// with an outbox as large as a socket task's.
    pub fn open(&mut self) -> Result<RigConn> {
        let hub = self.hub.clone().context("the hub was stopped")?;
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let (outbox, from_hub) = mpsc::channel(OUTBOX_CAPACITY);
        let device = self.device.clone();
        let opened = self.runtime.block_on(hub.send(Event::Open {
            conn,
            device,
            outbox,
        }));
        ensure!(opened, "the hub stopped taking events");
        Ok(RigConn { conn, from_hub })
    }

    /// Hands the hub one frame from `conn`.
    pub fn send(&mut self, conn: ConnId, bytes: Vec<u8>) -> Result<()> {
        let hub = self.hub.clone().context("the hub was stopped")?;
        let sent = self
            .runtime
            .block_on(hub.send(Event::Frame { conn, bytes }));
        ensure!(sent, "the hub stopped taking events");
        Ok(())
    }

    /// Lets the hub's clock tick (what the relay does every second).
    pub fn tick(&mut self) -> Result<()> {
        let hub = self.hub.clone().context("the hub was stopped")?;
        ensure!(
            self.runtime.block_on(hub.send(Event::Tick)),
            "the hub stopped taking events"
        );
        Ok(())
    }

    /// The next message the hub sent on `c`, waiting up to `wait`; `None` when nothing came.
    pub fn recv(&mut self, c: &mut RigConn, wait: Duration) -> Result<Option<Message>> {
        let item = self
            .runtime
            .block_on(async { tokio::time::timeout(wait, c.from_hub.recv()).await });
        match item {
            Err(_) => Ok(None),
            Ok(None) => bail!("the hub dropped connection {}", c.conn),
            Ok(Some(Outgoing::Frame(bytes))) => {
                Ok(Some(Message::decode(&bytes).with_context(|| {
                    format!("the hub sent a malformed frame {bytes:02x?}")
                })?))
            }
            Ok(Some(Outgoing::Close { reason, .. })) => {
                bail!("the hub closed connection {}: {reason}", c.conn)
            }
        }
    }

    /// The relay's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The hub thread runs and caught no panic.
    fn check(&mut self) -> Result<()> {
        let panics = self.metrics.panics.load(Ordering::Relaxed);
        ensure!(
            panics == 0,
            "the hub caught {panics} panic(s) handling frames"
        );
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            bail!("the hub thread stopped");
        }
        Ok(())
    }
}

impl Drop for HubRig {
    fn drop(&mut self) {
        // Dropping the last handle ends the hub's loop, which drops the store.
        self.hub = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where rigs keep their stores: memory-backed when the machine has `/dev/shm`, since every
/// fuzz input gets a fresh copy.
fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A `join` from `peer`, without storage (nothing of it is persisted by the relay).
pub fn join(peer: &str) -> Vec<u8> {
    Message::Join(JoinMessage {
        sender_id: PeerId::from(peer),
        peer_metadata: PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
        },
        supported_protocol_versions: vec!["1".into()],
        skips_in_step: false,
    })
    .encode()
}

fn sync_frame(kind: &str, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
    let m = SyncMessage {
        sender_id: PeerId::from(SESSION_PEER),
        target_id: PeerId::from(RELAY_PEER),
        document_id: doc,
        data,
    };
    if kind == "request" {
        Message::Request(m).encode()
    } else {
        Message::Sync(m).encode()
    }
}

/// The first sync message a peer sends about `doc` from a fresh state.
fn first_message(doc: &AutoCommit) -> Result<Vec<u8>> {
    Ok(doc
        .clone()
        .sync()
        .generate_sync_message(&mut automerge::sync::State::new())
        .context("a fresh state always has a first message")?
        .encode())
}

/// A sync message from `device` that carries its changes the `relay` copy lacks, found by
/// running the sync protocol between the two until the device sends changes.
fn message_with_changes(device: &mut AutoCommit, relay: &AutoCommit) -> Result<Vec<u8>> {
    let mut relay = relay.clone();
    let (mut ds, mut rs) = (automerge::sync::State::new(), automerge::sync::State::new());
    for _ in 0..10 {
        if let Some(m) = device.sync().generate_sync_message(&mut ds) {
            if !m.changes.is_empty() {
                return Ok(m.encode());
            }
            relay.sync().receive_sync_message(&mut rs, m)?;
        }
        if let Some(m) = relay.sync().generate_sync_message(&mut rs) {
            device.sync().receive_sync_message(&mut ds, m)?;
        }
    }
    bail!("the device never sent its changes")
}

/// A document with a fixed actor that describes itself as `kind` of `coalition`.
fn described_doc(actor: u8, kind: &str, coalition: &str) -> Result<AutoCommit> {
    let mut doc = AutoCommit::new().with_actor(ActorId::from([actor; 16]));
    doc.put(ROOT, META_KIND, kind)?;
    doc.put(ROOT, META_COALITION, coalition)?;
    doc.commit_with(automerge::transaction::CommitOptions::default().with_time(1_700_000_100));
    Ok(doc)
}

/// Real sessions for the seed corpus, by name: every message type, for documents the device
/// may sync, may not see, and that do not exist; new documents; a change; and broken frames.
pub fn seed_sessions(fx: &mut Fixtures) -> Result<Vec<(&'static str, Session)>> {
    let manifest = *fx.ours.id();
    let comments = fx.ours_doc(DocKind::Comments)?;
    let plan = fx.ours_doc(DocKind::Plan)?;
    let foreign = *fx.other.id();
    let unknown = DocumentId::from_bytes([0x5a; 16]);
    let stored_comments = fx
        .ours
        .doc(&comments)
        .context("comments document")?
        .doc
        .clone();

    // A comment by the coordinator: a sync message with one new change.
    let mut edited = Fixtures::load(&fixtures_dir())?.ours;
    let who = coordinator();
    edited.apply(
        &who,
        Edit::AddComment(Comment {
            id: "0190f0aa-0000-7000-8000-000000000001".into(),
            kind: CommentKind::Comment,
            about: None,
            text: "seed comment".into(),
            org: who.org.clone(),
            user: who.user.clone(),
            at: 1_700_000_200,
        }),
        1_700_000_200,
    )?;
    let mut device_comments = edited.doc(&comments).context("comments")?.doc.clone();
    let change = message_with_changes(&mut device_comments, &stored_comments)?;

    // New documents: one of ours (accepted), one naming the other coalition, one manifest.
    let mut ours_new = described_doc(0xc1, "comments", &manifest.to_string())?;
    let new_ours = message_with_changes(&mut ours_new, &AutoCommit::new())?;
    let mut theirs_new = described_doc(0xc2, "comments", &foreign.to_string())?;
    let new_theirs = message_with_changes(&mut theirs_new, &AutoCommit::new())?;
    let new_doc_id = DocumentId::from_bytes([0x6b; 16]);
    let mut manifest_new = described_doc(0xc3, "manifest", &new_doc_id.to_string())?;
    let new_manifest = message_with_changes(&mut manifest_new, &AutoCommit::new())?;
    let heads_of = |doc: &AutoCommit| first_message(doc);
    let plan_heads = heads_of(&fx.ours.doc(&plan).context("plan")?.doc)?;
    let foreign_heads = heads_of(fx.other.manifest())?;
    let empty = first_message(&AutoCommit::new())?;

    let peer = || PeerId::from(SESSION_PEER);
    let relay = || PeerId::from(RELAY_PEER);
    let eph = |doc| {
        Message::Ephemeral(EphemeralMessage {
            sender_id: peer(),
            target_id: relay(),
            count: 1,
            session_id: "s1".into(),
            document_id: doc,
            data: vec![0xa1, 0x61, 0x78, 0x01],
        })
        .encode()
    };
    let unknown_type = cbor_map(&[("type", "telepathy"), ("senderId", SESSION_PEER)])?;
    let truncated = {
        let full = sync_frame("sync", comments, change.clone());
        full[..full.len() / 2].to_vec()
    };
    Ok(vec![
        (
            "request-manifest",
            vec![sync_frame("request", manifest, empty.clone())],
        ),
        (
            "sync-plan-heads",
            vec![sync_frame("sync", plan, plan_heads)],
        ),
        (
            "sync-new-comment",
            vec![sync_frame("sync", comments, change.clone())],
        ),
        (
            "sync-new-comment-twice",
            vec![
                sync_frame("sync", comments, change.clone()),
                sync_frame("sync", comments, change),
            ],
        ),
        (
            "request-foreign",
            vec![sync_frame("request", foreign, empty.clone())],
        ),
        (
            "sync-foreign-heads",
            vec![sync_frame("sync", foreign, foreign_heads)],
        ),
        (
            "request-unknown",
            vec![sync_frame("request", unknown, empty.clone())],
        ),
        (
            "new-doc-ours",
            vec![sync_frame("sync", ours_new_id(), new_ours)],
        ),
        (
            "new-doc-foreign",
            vec![sync_frame("sync", theirs_new_id(), new_theirs)],
        ),
        (
            "new-manifest",
            vec![sync_frame("sync", new_doc_id, new_manifest)],
        ),
        (
            "sync-garbage-data",
            vec![sync_frame("sync", plan, vec![0x42, 0x00, 0xff, 0x13])],
        ),
        ("ephemeral", vec![eph(manifest), eph(foreign)]),
        (
            "doc-unavailable",
            vec![Message::DocUnavailable(DocUnavailableMessage {
                sender_id: peer(),
                target_id: relay(),
                document_id: unknown,
            })
            .encode()],
        ),
        (
            "remote-heads",
            vec![
                Message::RemoteSubscriptionChange(RemoteSubscriptionChangeMessage {
                    sender_id: peer(),
                    target_id: relay(),
                    add: vec![StorageId::from("relay-storage")],
                    remove: vec![],
                })
                .encode(),
                Message::RemoteHeadsChanged(RemoteHeadsChangedMessage {
                    sender_id: peer(),
                    target_id: relay(),
                    document_id: manifest,
                    new_heads: [(
                        StorageId::from("peer-storage"),
                        RemoteHeads {
                            heads: vec![],
                            timestamp: 1_700_000_000_000,
                        },
                    )]
                    .into(),
                })
                .encode(),
            ],
        ),
        (
            "join-again-then-peer",
            vec![
                join(SESSION_PEER),
                Message::Peer(PeerMessage {
                    sender_id: peer(),
                    target_id: relay(),
                    peer_metadata: PeerMetadata::default(),
                    selected_protocol_version: "1".into(),
                    behind: None,
                })
                .encode(),
            ],
        ),
        ("unknown-type", vec![unknown_type]),
        (
            "leave",
            vec![Message::Leave(LeaveMessage {
                sender_id: Some(peer()),
            })
            .encode()],
        ),
        (
            "error",
            vec![cbor_map(&[
                ("type", "error"),
                ("message", "something broke"),
                ("senderId", SESSION_PEER),
                ("targetId", RELAY_PEER),
            ])?],
        ),
        ("truncated", vec![truncated]),
        ("empty-frame", vec![Vec::new()]),
    ])
}

/// The id the seed gives a new document of ours.
fn ours_new_id() -> DocumentId {
    DocumentId::from_bytes([0x6c; 16])
}

/// The id the seed gives a new document naming the other coalition.
fn theirs_new_id() -> DocumentId {
    DocumentId::from_bytes([0x6d; 16])
}

/// A CBOR map of text entries, as a frame. Built by hand rather than from [`Message`] for
/// messages the relay must take whatever fields they grow (`error`) or does not know at all.
pub fn cbor_map(entries: &[(&str, &str)]) -> Result<Vec<u8>> {
    let value = ciborium::Value::Map(
        entries
            .iter()
            .map(|(k, v)| {
                (
                    ciborium::Value::Text((*k).into()),
                    ciborium::Value::Text((*v).into()),
                )
            })
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&value, &mut out)?;
    Ok(out)
}
