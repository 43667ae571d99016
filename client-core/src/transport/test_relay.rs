//! A relay for tests: a [`SyncEngine`] on the receiving side over a map of documents, as the
//! real relay answers (it creates documents a device brings, and says `doc-unavailable` for
//! ones nobody has).

use std::collections::BTreeMap;
use std::time::Instant;

use automerge::AutoCommit;

use crate::sync::{
    Action, ConnId, DocumentId, DocumentSource, EngineConfig, PeerId, PeerMetadata, StorageId,
    SyncEngine,
};

/// Documents and persisted sync states of the fake relay.
#[derive(Default)]
pub(crate) struct RelayDocs {
    pub(crate) docs: BTreeMap<DocumentId, AutoCommit>,
    pub(crate) sync_states: BTreeMap<(DocumentId, String), Vec<u8>>,
}

impl DocumentSource for RelayDocs {
    fn get_mut(&mut self, doc_id: &DocumentId) -> Option<&mut AutoCommit> {
        self.docs.get_mut(doc_id)
    }

    fn load_sync_state(&mut self, doc_id: &DocumentId, peer: &StorageId) -> Option<Vec<u8>> {
        self.sync_states
            .get(&(*doc_id, peer.as_str().to_owned()))
            .cloned()
    }
}

/// The fake relay.
pub(crate) struct FakeRelay {
    pub(crate) engine: SyncEngine,
    pub(crate) store: RelayDocs,
}

impl FakeRelay {
    pub(crate) fn new() -> Self {
        let mut config = EngineConfig::new(PeerId::from("relay"));
        config.metadata = PeerMetadata {
            storage_id: Some(StorageId::from("relay-storage")),
            is_ephemeral: false,
        };
        FakeRelay {
            engine: SyncEngine::new(config),
            store: RelayDocs::default(),
        }
    }

    /// A device connected on `conn`.
    pub(crate) fn accept(&mut self, conn: ConnId) {
        self.engine.accept(conn, Instant::now());
    }

    /// A frame from the device; returns the frames to send back on `conn`.
    pub(crate) fn receive(&mut self, conn: ConnId, frame: &[u8]) -> Vec<(ConnId, Vec<u8>)> {
        let actions = self
            .engine
            .receive_bytes(conn, frame, Instant::now(), &mut self.store);
        self.carry_out(actions)
    }

    /// The device on `conn` went away.
    pub(crate) fn disconnected(&mut self, conn: ConnId) {
        let actions = self.engine.peer_disconnected(conn, &mut self.store);
        self.carry_out(actions);
    }

    fn carry_out(&mut self, actions: Vec<Action>) -> Vec<(ConnId, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            match action {
                Action::Send { conn, message } => out.push((conn, message.encode())),
                Action::PersistSyncState {
                    doc_id,
                    peer_storage_id,
                    bytes,
                } => {
                    self.store
                        .sync_states
                        .insert((doc_id, peer_storage_id.as_str().to_owned()), bytes);
                }
                Action::DocumentRequested {
                    doc_id,
                    peer_has_data,
                    ..
                } => {
                    let next = if peer_has_data {
                        self.store.docs.insert(doc_id, AutoCommit::new());
                        self.engine.doc_loaded(doc_id, &mut self.store)
                    } else {
                        self.engine.doc_unavailable(doc_id)
                    };
                    todo.extend(next);
                }
                _ => {}
            }
        }
        out
    }
}

/// The demo coalition on the relay; returns it with its id and the demo people.
pub(crate) fn demo_relay() -> (FakeRelay, DocumentId, crate::demo::Cast) {
    let (coalition, cast) = crate::demo::bosnia().expect("demo coalition");
    let mut relay = FakeRelay::new();
    for d in coalition.docs() {
        relay.store.docs.insert(d.id, d.doc.clone());
    }
    (relay, *coalition.id(), cast)
}

/// Makes an edit on the device, as `coalition comment` does: applied, then saved durably.
pub(crate) fn device_comment(
    store: &mut crate::store::Store,
    coalition: &DocumentId,
    who: &crate::coalition::Identity,
    text: &str,
) -> Vec<DocumentId> {
    use crate::model::{Comment, CommentKind};
    let mut c = store.load(coalition).expect("load coalition");
    c.set_actor(who);
    let committed = c
        .apply(
            who,
            crate::coalition::Edit::AddComment(Comment {
                id: crate::ids::new_entity_id(),
                kind: CommentKind::FieldNote,
                about: None,
                text: text.to_owned(),
                org: who.org.clone(),
                user: who.user.clone(),
                at: 1_700_000_000,
            }),
            1_700_000_000,
        )
        .expect("apply");
    store.save(&mut c, &committed.docs).expect("save");
    committed.docs
}

/// Every row of the store's document tables, to show a store was not changed.
pub(crate) fn dump_documents(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).expect("open store file");
    let mut out = Vec::new();
    for sql in [
        "SELECT 'chunk', id, doc_id, snapshot, hex(data) FROM chunks ORDER BY id",
        "SELECT 'doc', doc_id, coalition_id, kind, COALESCE(owner, '') || ' ' || updated_at FROM documents ORDER BY doc_id",
        "SELECT 'state', doc_id, peer, '', hex(state) FROM sync_states ORDER BY doc_id, peer",
    ] {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let rows = stmt
            .query_map([], |r| {
                Ok(format!(
                    "{}|{}|{}|{}|{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, rusqlite::types::Value>(1).map(|v| format!("{v:?}"))?,
                    r.get::<_, String>(2)?,
                    r.get::<_, rusqlite::types::Value>(3).map(|v| format!("{v:?}"))?,
                    r.get::<_, String>(4)?,
                ))
            })
            .expect("query");
        for row in rows {
            out.push(row.expect("row"));
        }
    }
    out
}
