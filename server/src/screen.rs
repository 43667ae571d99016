//! Screening the changes a peer sends, before the engine applies any of them.
//!
//! Every `sync` or `request` message that carries changes is opened: its changes are checked
//! with [`coalition_core::check::check_changes`] (each by its author's rights, on what it
//! touches, and on the hard rules of the document after it), and only the accepted ones stay
//! in the message the engine sees. The others are kept in quarantine by the hub and named to
//! the sender in an `error` message.
//!
//! Taking changes out of a sync message would leave the two sides disagreeing about heads:
//! the peer advertises heads the relay will never have, so the relay would ask for them
//! forever. The screen therefore also rewrites the heads the peer advertises, replacing each
//! refused (or not yet judgeable) change by its dependencies, as if the peer did not have it.
//! The sync then settles on what the relay accepted; a device that learns of the refusal
//! moves its copy back to that (see the client's session), and a stock client simply keeps
//! its change to itself.
//!
//! Changes whose dependencies the relay does not have yet (possible when a peer's bloom
//! filter wrongly says the relay has them) wait here, per document, until the dependencies
//! arrive, and are then judged with them.

use std::collections::{BTreeSet, HashMap};

use automerge::sync::{ChunkList, Message as SyncData};
use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use coalition_core::check::{check_changes_on, has_change, Author, Refusal, Refused};
use coalition_core::model::DocKind;

/// Changes waiting for their dependencies, per document, at most.
pub const MAX_WAITING: usize = 4096;

/// What the screen remembers of one document between messages.
#[derive(Debug, Default)]
pub struct Pending {
    /// Refused changes: hash → dependencies (to rewrite heads that name them).
    refused: HashMap<ChangeHash, Vec<ChangeHash>>,
    /// Changes waiting for dependencies the relay does not have.
    waiting: HashMap<ChangeHash, Change>,
    /// The copy of the document changes are tried on (see
    /// [`coalition_core::check::check_changes_on`]).
    copy: Option<AutoCommit>,
}

impl Pending {
    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.waiting.is_empty()
    }

    /// Heads as the relay should believe them: every refused or waiting change the document
    /// does not hold (a coordinator may have accepted one since) replaced by its
    /// dependencies, transitively.
    fn rewrite_heads(&self, doc: &mut AutoCommit, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<ChangeHash> = heads.to_vec();
        let mut seen = BTreeSet::new();
        while let Some(h) = stack.pop() {
            if !seen.insert(h) {
                continue;
            }
            if has_change(doc, &h) {
                out.insert(h);
            } else if let Some(deps) = self.refused.get(&h) {
                stack.extend(deps.iter().copied());
            } else if let Some(change) = self.waiting.get(&h) {
                stack.extend(change.deps().iter().copied());
            } else {
                out.insert(h);
            }
        }
        out.into_iter().collect()
    }
}

/// Why a message could not be screened at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScreenError {
    /// A chunk in the message is neither a change nor a document.
    #[error("the sync message holds bytes that are not Automerge changes")]
    Malformed,
    /// Too many changes wait for dependencies that never come.
    #[error("more than {MAX_WAITING} changes of this document wait for changes never sent")]
    TooManyWaiting,
}

/// The outcome of screening one message.
#[derive(Debug)]
pub struct Screened {
    /// The message to give the engine (encoded), when it differs from the one received.
    pub rewritten: Option<Vec<u8>>,
    /// Changes refused, with why.
    pub refused: Vec<Refused>,
    /// How many changes were accepted.
    pub accepted: usize,
    /// Their size in bytes.
    pub accepted_bytes: usize,
    /// Times the document was copied whole to try them on (see [`coalition_core::check::Checked::copies`]).
    pub copies: usize,
}

/// The changes in a sync message, one by one (see [`coalition_core::sync::changes_in`]).
pub fn changes_in(chunks: &ChunkList) -> Result<Vec<Change>, ScreenError> {
    coalition_core::sync::changes_in(chunks).ok_or(ScreenError::Malformed)
}

/// Screen one decoded sync message against `doc` (of `kind`, owned by `owner`), with `author`
/// telling who each actor is. `doc` is not modified.
pub fn screen(
    doc: &mut AutoCommit,
    kind: DocKind,
    owner: Option<&str>,
    mut message: SyncData,
    pending: &mut Pending,
    author: &mut dyn FnMut(&ActorId) -> Result<Author, Refusal>,
) -> Result<Screened, ScreenError> {
    let mut changes = changes_in(&message.changes)?;
    if changes.is_empty() && pending.is_empty() {
        return Ok(Screened {
            rewritten: None,
            refused: Vec::new(),
            accepted: 0,
            accepted_bytes: 0,
            copies: 0,
        });
    }
    // Changes that waited are judged again with what arrived.
    changes.extend(pending.waiting.drain().map(|(_, c)| c));
    let mut seen = BTreeSet::new();
    changes.retain(|c| {
        let h = c.hash();
        seen.insert(h) && !pending.refused.contains_key(&h) && !has_change(doc, &h)
    });
    let checked = if changes.is_empty() {
        Default::default()
    } else {
        check_changes_on(doc, &mut pending.copy, kind, owner, changes, author)
    };
    for r in &checked.refused {
        pending
            .refused
            .insert(r.change.hash(), r.change.deps().to_vec());
    }
    if checked.waiting.len() > MAX_WAITING {
        return Err(ScreenError::TooManyWaiting);
    }
    for c in checked.waiting {
        pending.waiting.insert(c.hash(), c);
    }
    let accepted = checked.accepted.len();
    let accepted_bytes = checked.accepted.iter().map(|c| c.raw_bytes().len()).sum();
    message.changes = ChunkList::from(
        checked
            .accepted
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect::<Vec<_>>(),
    );
    message.heads = pending.rewrite_heads(doc, &message.heads);
    Ok(Screened {
        rewritten: Some(message.encode()),
        refused: checked.refused,
        accepted,
        accepted_bytes,
        copies: checked.copies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::{State, SyncDoc};
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::ROOT;

    fn author_of(allowed: ActorId) -> impl FnMut(&ActorId) -> Result<Author, Refusal> {
        move |a: &ActorId| {
            if *a == allowed {
                Ok(Author {
                    org: "ISU".into(),
                    roles: vec![coalition_core::model::Role::Coordinator],
                })
            } else {
                Err(Refusal::UnknownAuthor {
                    actor: a.to_hex_string(),
                })
            }
        }
    }

    /// A comments document both sides hold, and a peer copy with one more change by `actor`.
    fn setup(actor: ActorId) -> (AutoCommit, AutoCommit) {
        let mut relay = AutoCommit::new().with_actor(ActorId::from([1u8; 16]));
        relay
            .put(ROOT, coalition_core::coalition::META_KIND, "comments")
            .expect("put");
        let comments = relay
            .put_object(ROOT, "comments", automerge::ObjType::Map)
            .expect("map");
        relay.commit_with(CommitOptions::default().with_time(1));
        let mut peer = relay.fork().with_actor(actor);
        let comment = r#"{"id":"c1","kind":"comment","about":null,"text":"hello","org":"ISU","user":"ana","at":2}"#;
        peer.put(&comments, "c1", comment).expect("put");
        peer.commit_with(CommitOptions::default().with_time(2));
        (relay, peer)
    }

    /// The sync message the peer sends after the relay's first one.
    fn message_from(peer: &mut AutoCommit, relay: &mut AutoCommit) -> SyncData {
        let mut rs = State::new();
        let mut ps = State::new();
        let first = relay.sync().generate_sync_message(&mut rs).expect("first");
        peer.sync()
            .receive_sync_message(&mut ps, first)
            .expect("receive");
        peer.sync().generate_sync_message(&mut ps).expect("answer")
    }

    /// Screens `message` against `relay` with `allowed` the one known author.
    fn screen_from(relay: &mut AutoCommit, message: SyncData, allowed: ActorId) -> Screened {
        screen(
            relay,
            DocKind::Comments,
            None,
            message,
            &mut Pending::default(),
            &mut author_of(allowed),
        )
        .expect("screen")
    }

    /// Adds `n` comments to `doc`, one change each.
    fn add_comments(doc: &mut AutoCommit, prefix: &str, n: i64) {
        let comments = automerge::ReadDoc::get(doc, ROOT, "comments")
            .expect("get")
            .expect("map")
            .1;
        for i in 0..n {
            let id = format!("{prefix}{i}");
            let comment = format!(
                r#"{{"id":"{id}","kind":"comment","about":null,"text":"more","org":"ISU","user":"ana","at":3}}"#
            );
            doc.put(&comments, id, comment).expect("put");
            doc.commit_with(CommitOptions::default().with_time(3 + i));
        }
    }

    #[test]
    fn refused_changes_leave_the_message_and_its_heads() {
        let stranger = ActorId::from([9u8; 16]);
        let (mut relay, mut peer) = setup(stranger.clone());
        let message = message_from(&mut peer, &mut relay);
        assert_eq!(message.changes.len(), 1);
        let mut pending = Pending::default();
        let out = screen(
            &mut relay,
            DocKind::Comments,
            None,
            message,
            &mut pending,
            &mut author_of(ActorId::from([1u8; 16])),
        )
        .expect("screen");
        assert_eq!(out.accepted, 0);
        assert_eq!(out.refused.len(), 1);
        let rewritten = SyncData::decode(&out.rewritten.expect("rewritten")).expect("decode");
        assert!(rewritten.changes.is_empty());
        // The peer's head is replaced by what the relay has.
        assert_eq!(rewritten.heads, relay.get_heads());
    }

    #[test]
    fn accepted_changes_stay() {
        let allowed = ActorId::from([1u8; 16]);
        let (mut relay, mut peer) = setup(allowed.clone());
        let peer_heads = peer.get_heads();
        let message = message_from(&mut peer, &mut relay);
        let mut pending = Pending::default();
        let out = screen(
            &mut relay,
            DocKind::Comments,
            None,
            message,
            &mut pending,
            &mut author_of(allowed),
        )
        .expect("screen");
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(out.accepted, 1);
        let rewritten = SyncData::decode(&out.rewritten.expect("rewritten")).expect("decode");
        assert_eq!(rewritten.changes.len(), 1);
        assert_eq!(rewritten.heads, peer_heads);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_whole_document_from_a_peer_is_screened_as_its_changes() {
        let allowed = ActorId::from([1u8; 16]);
        let (mut relay, mut peer) = setup(allowed.clone());
        add_comments(&mut peer, "d", 6);
        let peer_heads = peer.get_heads();
        let message = message_from(&mut peer, &mut relay);
        // More than a third of the document: Automerge sends it whole.
        assert_eq!(message.version, automerge::sync::MessageVersion::V2);
        let out = screen_from(&mut relay, message, allowed);
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(out.accepted, 7);
        let rewritten = SyncData::decode(&out.rewritten.expect("rewritten")).expect("decode");
        assert_eq!(rewritten.heads, peer_heads);
    }

    #[test]
    fn changes_sent_one_after_the_other_in_one_chunk_are_screened_one_by_one() {
        let allowed = ActorId::from([1u8; 16]);
        let (mut relay, _) = setup(allowed.clone());
        // Enough history that two new changes are less than a third of the document.
        add_comments(&mut relay, "seed", 12);
        let mut peer = relay.fork().with_actor(allowed.clone());
        add_comments(&mut peer, "e", 2);
        let message = message_from(&mut peer, &mut relay);
        assert_eq!(message.version, automerge::sync::MessageVersion::V2);
        assert_eq!(message.changes.len(), 1, "both changes in one chunk");
        let out = screen_from(&mut relay, message, allowed);
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(out.accepted, 2);
    }

    #[test]
    fn garbage_chunks_are_malformed() {
        // Not a chunk after its magic bytes; a length that runs past the end.
        let mut long = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0x7f];
        long.extend([0; 10]);
        for chunk in [vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3], long] {
            let chunks = ChunkList::from(vec![chunk]);
            assert!(matches!(changes_in(&chunks), Err(ScreenError::Malformed)));
        }
    }
}
