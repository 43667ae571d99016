//! Passing changes that just arrived from one peer on to the other peers of a document.
//!
//! On a relay every change one peer sends must go to every other peer of its document, and
//! most of those peers were up to date a moment ago. Asking Automerge for each of them
//! (`generate_sync_message`) makes it work out again, peer by peer, which changes that peer
//! lacks: it walks the change graph from the peer's last sync, tests each change against the
//! peer's Bloom filter, and rebuilds the changes it picked from the document's columns. For a
//! peer that holds, or was sent, everything up to the document's heads from just before the
//! message, the answer is known without any of that: exactly the changes that arrived, as
//! they arrived.
//!
//! [`Arrived`] keeps those changes (their hashes and bytes) and builds, for each such peer,
//! the message Automerge would have built, updating the peer's sync state the way
//! `generate_sync_message` does. Peers in any other state (behind, asking for something,
//! never heard from) get the general path.

use automerge::sync::{self, BloomFilter, Have, MessageFlags, MessageVersion};
use automerge::{AutoCommit, Change, ChangeHash};

/// Changes a message brought that the document did not hold, read before applying it.
pub(super) struct Incoming {
    before: Vec<ChangeHash>,
    changes: Vec<(ChangeHash, Vec<u8>)>,
}

impl Incoming {
    /// The changes of `message` that `doc` does not hold yet, or `None` when the message
    /// brings none, or brings them in a form this shortcut does not handle: each chunk must be
    /// one change (a v2 message may carry several changes, or a whole saved document, in one
    /// chunk).
    pub(super) fn read(message: &sync::Message, doc: &mut AutoCommit) -> Option<Incoming> {
        if message.changes.is_empty() {
            return None;
        }
        let mut changes = Vec::with_capacity(message.changes.len());
        for bytes in message.changes.iter() {
            let hash = Change::try_from(bytes).ok()?.hash();
            if doc.get_missing_deps(&[hash]).contains(&hash) {
                changes.push((hash, bytes.to_vec()));
            }
        }
        if changes.is_empty() {
            return None;
        }
        Some(Incoming {
            before: doc.get_heads(),
            changes,
        })
    }

    /// What applying the message did, when it did exactly this: every change it brought is in
    /// the document, nothing waits for a dependency, and the new heads are made of those
    /// changes and the old heads. Otherwise (a change released from the queue, say) `None`.
    pub(super) fn applied(self, doc: &mut AutoCommit) -> Option<Arrived> {
        if !doc.get_missing_deps(&[]).is_empty() {
            return None;
        }
        let after = doc.get_heads();
        let known = |h: &ChangeHash| {
            self.before.contains(h) || self.changes.iter().any(|(hash, _)| hash == h)
        };
        if !after.iter().all(known) {
            return None;
        }
        Some(Arrived {
            before: self.before,
            after,
            changes: self.changes,
        })
    }
}

/// Changes that one message added to a document, ready to be passed on.
pub(super) struct Arrived {
    before: Vec<ChangeHash>,
    after: Vec<ChangeHash>,
    changes: Vec<(ChangeHash, Vec<u8>)>,
}

impl Arrived {
    /// The bytes of the changes.
    pub(super) fn byte_len(&self) -> usize {
        self.changes.iter().map(|(_, bytes)| bytes.len()).sum()
    }

    /// The heads before and after the message.
    pub(super) fn heads(&self) -> (&[ChangeHash], &[ChangeHash]) {
        (&self.before, &self.after)
    }

    /// The message for a peer of the document, if everything up to the heads before the
    /// message already went to that peer (`caught_up`, see [`up_to_date`]), with `state` and
    /// `caught_up` updated as `generate_sync_message` would have updated the state. `None`
    /// when the general path must decide.
    pub(super) fn message_for(
        &self,
        doc: &mut AutoCommit,
        state: &mut sync::State,
        caught_up: &mut Option<Vec<ChangeHash>>,
    ) -> Option<sync::Message> {
        if !up_to_date(doc, state, caught_up.as_deref(), &self.before) {
            return None;
        }
        let mut changes = Vec::with_capacity(self.changes.len());
        for (hash, bytes) in &self.changes {
            if state.sent_hashes.insert(*hash) {
                changes.push(bytes.clone());
            }
        }
        state.have_responded = true;
        state.last_sent_heads.clone_from(&self.after);
        state.in_flight = true;
        *caught_up = Some(self.after.clone());
        let mut flags = MessageFlags::new();
        flags.set(MessageFlags::SUPPORTS_SYNC_RESET);
        Some(sync::Message {
            heads: self.after.clone(),
            need: Vec::new(),
            // We hold everything up to our heads, and the peer will too once it applied this
            // message (it holds everything before it, and messages arrive in order): our heads
            // with an empty filter say exactly what we have. Automerge would send a filter of
            // the changes since the heads we last agreed on, which says the same at more cost.
            have: vec![Have {
                last_sync: self.after.clone(),
                bloom: BloomFilter::default(),
            }],
            changes: changes.into(),
            flags: Some(flags),
            version: MessageVersion::V1,
        })
    }
}

/// Whether a peer has, or has been sent, every change up to `before` and asks for nothing:
/// then what it lacks of the document after the message is exactly the changes the message
/// added. `caught_up` is what the engine knows of the peer: heads all of whose history went to
/// the peer (it told us it holds them, or we sent what it lacked of them), in order, on this
/// connection. Also required: we last sent it `before`, it needs nothing, we know every head
/// it named (otherwise we would ask for them), its last sync point is one we hold (otherwise
/// Automerge answers with a reset), and no read-only mode or reset is in play.
fn up_to_date(
    doc: &mut AutoCommit,
    state: &sync::State,
    caught_up: Option<&[ChangeHash]>,
    before: &[ChangeHash],
) -> bool {
    if caught_up != Some(before)
        || !state.have_responded
        || state.read_only
        || state.peer_read_only
        || state.needs_reset
        || state.last_sent_heads != before
        || !state.their_need.as_ref().is_some_and(Vec::is_empty)
    {
        return false;
    }
    let Some(their_heads) = state.their_heads.as_ref() else {
        return false;
    };
    if !doc.get_missing_deps(their_heads).is_empty() {
        return false;
    }
    match state.their_have.as_ref().and_then(|haves| haves.first()) {
        Some(have) => doc.get_missing_deps(&have.last_sync).is_empty(),
        None => false,
    }
}
