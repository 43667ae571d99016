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
//!
//! Two more common cases are taken here: the answer to the author of the changes (it holds
//! everything, so the answer only tells it our heads: [`acknowledgement`]), and receiving a
//! message without changes (most often a peer acknowledging ours) or with changes the document
//! can take whole, which Automerge would apply only after a walk over the document's whole
//! history ([`receive_sync_message`]).

use automerge::sync::{self, BloomFilter, Have, MessageFlags, MessageVersion, SyncDoc};
use automerge::{AutoCommit, Change, ChangeHash};

/// Changes a message brought that the document did not hold, read before applying it.
pub(super) struct Incoming {
    before: Vec<ChangeHash>,
    changes: Vec<(ChangeHash, Vec<u8>)>,
}

impl Incoming {
    /// The changes of `message` that `doc` does not hold yet, or `None` when the message
    /// brings none, or brings them in a form this shortcut does not handle: each chunk must be
    /// changes (one, or several one after the other), not a whole saved document.
    pub(super) fn read(message: &sync::Message, doc: &mut AutoCommit) -> Option<Incoming> {
        if message.changes.is_empty() {
            return None;
        }
        let mut changes = Vec::with_capacity(message.changes.len());
        for chunk in message.changes.iter() {
            for change in changes_of_chunk(chunk)? {
                let hash = change.hash();
                if doc.get_missing_deps(&[hash]).contains(&hash) {
                    changes.push((hash, change.raw_bytes().to_vec()));
                }
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
    /// The changes the document gained since `before`, when they came in a form [`Incoming`]
    /// does not read (a whole document in one chunk: Automerge sends one when the changes are
    /// more than a third of the document's), found once here instead of once per peer. `None`
    /// when something waits for a dependency or the changes come to more than `max_bytes`.
    pub(super) fn since(
        doc: &mut AutoCommit,
        before: &[ChangeHash],
        max_bytes: usize,
    ) -> Option<Arrived> {
        if !doc.get_missing_deps(&[]).is_empty() {
            return None;
        }
        let mut changes = Vec::new();
        let mut bytes = 0;
        for change in doc.get_changes(before) {
            bytes += change.raw_bytes().len();
            if bytes > max_bytes {
                return None;
            }
            changes.push((change.hash(), change.raw_bytes().to_vec()));
        }
        if changes.is_empty() {
            return None;
        }
        Some(Arrived {
            before: before.to_vec(),
            after: doc.get_heads(),
            changes,
        })
    }

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
    /// `caught_up` updated as `generate_sync_message` would have updated the state, and the
    /// changes it sends recorded in `sent`. `None` when the general path must decide.
    pub(super) fn message_for(
        &self,
        doc: &mut AutoCommit,
        state: &mut sync::State,
        caught_up: &mut Option<Vec<ChangeHash>>,
        sent: &mut SentLog,
    ) -> Option<sync::Message> {
        if !up_to_date(doc, state, caught_up.as_deref(), &self.before, true) {
            return None;
        }
        let mut changes = Vec::with_capacity(self.changes.len());
        for (hash, bytes) in &self.changes {
            if state.sent_hashes.insert(*hash) {
                changes.push(bytes.clone());
                sent.record(*hash);
            }
        }
        state.have_responded = true;
        state.last_sent_heads.clone_from(&self.after);
        state.in_flight = true;
        *caught_up = Some(self.after.clone());
        Some(direct_message(self.after.clone(), changes))
    }
}

/// The answer to a peer that holds, or was sent, everything we hold but was not told our heads
/// yet: typically the author of the changes that just arrived (which may not have received
/// the last changes we sent it). Automerge would build the same message (our heads, what we
/// have, no changes) after walking the changes since our last sync with it to find that the
/// peer lacks none it was not already sent.
/// `None` when the general path must decide.
pub(super) fn acknowledgement(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    caught_up: Option<&[ChangeHash]>,
) -> Option<sync::Message> {
    let heads = doc.get_heads();
    if heads.is_empty()
        || state.last_sent_heads == heads
        || !up_to_date(doc, state, caught_up, &heads, false)
    {
        return None;
    }
    state.have_responded = true;
    state.last_sent_heads.clone_from(&heads);
    state.in_flight = true;
    Some(direct_message(heads, Vec::new()))
}

/// Hashes we sent and [`receive_sync_message`] keeps untrimmed, at most; beyond that,
/// Automerge's walk trims them.
const MAX_UNTRIMMED: usize = 1024;

/// The changes passed on directly to one peer on this connection, in the order they went.
/// The connection delivers messages in order and the peer applies each as it comes, so once
/// the peer names one of them among its heads, it holds every change sent before it too (each
/// one's dependencies went before it, or were held already). That trims the hashes we sent
/// while the peer is behind, when its heads never equal ours and naming its heads alone
/// would trim only those.
#[derive(Debug, Default)]
pub(super) struct SentLog(std::collections::VecDeque<ChangeHash>);

impl SentLog {
    fn record(&mut self, hash: ChangeHash) {
        if self.0.len() >= MAX_UNTRIMMED {
            // The peer has not named any of them for a long time: Automerge's walk will trim.
            self.0.clear();
        }
        self.0.push_back(hash);
    }

    /// Trims from `state` the hashes sent up to the last of `state.their_heads` we sent.
    pub(super) fn trim(&mut self, state: &mut sync::State) {
        if state.sent_hashes.is_empty() {
            self.0.clear();
            return;
        }
        let Some(heads) = state.their_heads.as_ref() else {
            return;
        };
        let Some(last) = self.0.iter().rposition(|h| heads.contains(h)) else {
            return;
        };
        for hash in self.0.drain(..=last) {
            state.sent_hashes.remove(&hash);
        }
    }
}

/// Applies a sync message to `doc` and `state`, as `receive_sync_message` does, without its
/// walk over the document's whole history to trim the hashes we sent, when the message is of
/// the common kind: no changes (most often a peer acknowledging ours), or changes each in its
/// own chunk whose dependencies the document already holds (a peer's new edit, or ours passed
/// on by a relay). Hashes the peer now holds are trimmed all at once when it holds our heads,
/// and by name otherwise (a hash it does not hold is never among them: it is the one thing the
/// trimming must keep). Anything else goes to Automerge.
pub fn receive_sync_message(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    message: sync::Message,
) -> Result<(), automerge::AutomergeError> {
    receive_sync_message_by(doc, state, message).map(|_| ())
}

/// How [`receive_sync_message_by`] took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReceivePath {
    /// Without Automerge's walk of the change graph.
    Direct,
    /// Through Automerge's `receive_sync_message`.
    General,
}

/// [`receive_sync_message`], saying which way the message went: a peer whose messages keep
/// taking the general path costs the relay a walk of the document's history each time.
pub(super) fn receive_sync_message_by(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    message: sync::Message,
) -> Result<ReceivePath, automerge::AutomergeError> {
    match receive_common(doc, state, message) {
        Ok(received) => received.map(|()| ReceivePath::Direct),
        Err(message) => doc
            .sync()
            .receive_sync_message(state, message)
            .map(|()| ReceivePath::General),
    }
}

/// [`receive_sync_message`] for the messages it takes on itself; the message back otherwise.
fn receive_common(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    message: sync::Message,
) -> Result<Result<(), automerge::AutomergeError>, sync::Message> {
    if state.sent_hashes.len() > MAX_UNTRIMMED || !doc.get_missing_deps(&[]).is_empty() {
        // (With changes waiting for their dependencies, "held" would need Automerge's queue.)
        return Err(message);
    }
    let whole = if message.changes.is_empty() {
        Vec::new()
    } else {
        match (state.read_only, whole_changes(doc, &message)) {
            (false, Some(changes)) => changes,
            _ => return Err(message),
        }
    };
    let sync::Message {
        heads,
        need,
        have,
        flags,
        ..
    } = message;
    state.in_flight = false;
    if let Some(flags) = flags {
        let mut capabilities = vec![sync::Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            capabilities.push(sync::Capability::SyncReset);
        }
        state.their_capabilities = Some(capabilities);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }
    let changes_is_empty = whole.is_empty();
    let before = doc.get_heads();
    if !changes_is_empty {
        if let Err(error) = doc.apply_changes(whole) {
            return Ok(Err(error));
        }
        state.shared_heads = advance_heads(&before, &doc.get_heads(), &state.shared_heads);
    }
    let our_heads = doc.get_heads();
    if heads == our_heads {
        state.sent_hashes.clear();
    } else {
        for head in &heads {
            state.sent_hashes.remove(head);
        }
    }
    if changes_is_empty && heads == before {
        state.last_sent_heads.clone_from(&heads);
    }
    let missing = doc.get_missing_deps(&heads);
    if heads.iter().all(|h| !missing.contains(h)) {
        state.shared_heads.clone_from(&heads);
        if heads.is_empty() {
            // The peer lost everything: start again from nothing.
            state.last_sent_heads = Vec::new();
            state.sent_hashes.clear();
        }
    } else {
        let mut shared: Vec<ChangeHash> = state
            .shared_heads
            .iter()
            .chain(heads.iter().filter(|h| !missing.contains(h)))
            .copied()
            .collect();
        shared.sort();
        shared.dedup();
        state.shared_heads = shared;
    }
    state.their_have = Some(have);
    state.their_heads = Some(heads);
    state.their_need = Some(need);
    Ok(Ok(()))
}

/// The changes in a sync message's change chunks, one by one. A chunk is one change, several
/// changes one after the other (Automerge 0.12 sends a peer that reads v2 messages the changes
/// it lacks that way, in one chunk: a device's edit, say), or a whole document (a v2 message
/// with more than a third of the document). `None` when a chunk is none of those.
pub fn changes_in(chunks: &sync::ChunkList) -> Option<Vec<Change>> {
    let mut out = Vec::new();
    for chunk in chunks.iter() {
        match changes_of_chunk(chunk) {
            Some(changes) => out.extend(changes),
            None => {
                let doc = automerge::Automerge::load(chunk).ok()?;
                out.extend(doc.get_changes(&[]));
            }
        }
    }
    Some(out)
}

/// The changes in one chunk that holds one change or several one after the other; `None`
/// for anything else (a whole document, or garbage).
fn changes_of_chunk(chunk: &[u8]) -> Option<Vec<Change>> {
    if let Ok(change) = Change::from_bytes(chunk.to_vec()) {
        return Some(vec![change]);
    }
    split_chunks(chunk)?
        .into_iter()
        .map(|piece| Change::from_bytes(piece.to_vec()).ok())
        .collect()
}

/// The first bytes of every Automerge storage chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Splits bytes holding storage chunks one after the other (each: the magic bytes, a 4-byte
/// checksum, a type byte, the length of the rest as unsigned LEB128, the rest). `None` when
/// they do not split that way.
fn split_chunks(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 9 || rest[..4] != CHUNK_MAGIC {
            return None;
        }
        let (len, used) = uleb128(&rest[9..])?;
        let end = 9usize
            .checked_add(used)?
            .checked_add(usize::try_from(len).ok()?)?;
        if end > rest.len() {
            return None;
        }
        let (chunk, tail) = rest.split_at(end);
        out.push(chunk);
        rest = tail;
    }
    Some(out)
}

/// An unsigned LEB128 number at the start of `bytes`, and how many bytes it took.
fn uleb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * i as u32;
        if (bits << shift) >> shift != bits {
            // More than 64 bits.
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The message's changes, when applying them leaves nothing waiting: every chunk holds one
/// change or several one after the other (a whole document goes down the general path), and
/// every dependency is in the document or among them.
fn whole_changes(doc: &mut AutoCommit, message: &sync::Message) -> Option<Vec<Change>> {
    let mut changes = Vec::new();
    for chunk in message.changes.iter() {
        changes.extend(changes_of_chunk(chunk)?);
    }
    let deps: Vec<ChangeHash> = changes
        .iter()
        .flat_map(|c| c.deps().iter().copied())
        .filter(|d| !changes.iter().any(|c| c.hash() == *d))
        .collect();
    doc.get_missing_deps(&deps).is_empty().then_some(changes)
}

/// The shared heads after applying changes, as Automerge advances them: our new heads that
/// are new, and the old shared heads that are still heads.
fn advance_heads(
    before: &[ChangeHash],
    after: &[ChangeHash],
    shared: &[ChangeHash],
) -> Vec<ChangeHash> {
    let mut advanced: Vec<ChangeHash> = after
        .iter()
        .filter(|h| !before.contains(h))
        .chain(shared.iter().filter(|h| after.contains(h)))
        .copied()
        .collect();
    advanced.sort();
    advanced.dedup();
    advanced
}

/// A message of ours that sends `changes` and says we hold everything up to `heads`. We hold
/// everything up to our heads, and the peer will too once it applied this message (it holds
/// everything before it, and messages arrive in order): our heads with an empty filter say
/// exactly what we have. Automerge sends a filter of the changes since the heads we last
/// agreed on, which says the same at more cost.
fn direct_message(heads: Vec<ChangeHash>, changes: Vec<Vec<u8>>) -> sync::Message {
    let mut flags = MessageFlags::new();
    flags.set(MessageFlags::SUPPORTS_SYNC_RESET);
    sync::Message {
        need: Vec::new(),
        have: vec![Have {
            last_sync: heads.clone(),
            bloom: BloomFilter::default(),
        }],
        heads,
        changes: changes.into(),
        flags: Some(flags),
        version: MessageVersion::V1,
    }
}

/// Whether a peer has, or has been sent, every change up to `before` and asks for nothing:
/// then what it lacks of the document after the message is exactly the changes the message
/// added. `caught_up` is what the engine knows of the peer: heads all of whose history went to
/// the peer (it told us it holds them, or we sent what it lacked of them), in order, on this
/// connection. Also required: it needs nothing, we know every head
/// it named (otherwise we would ask for them), its last sync point is one we hold (otherwise
/// Automerge answers with a reset), and no read-only mode or reset is in play. With
/// `told_before`, we also last sent it `before` itself.
fn up_to_date(
    doc: &mut AutoCommit,
    state: &sync::State,
    caught_up: Option<&[ChangeHash]>,
    before: &[ChangeHash],
    told_before: bool,
) -> bool {
    if caught_up != Some(before)
        || !state.have_responded
        || state.read_only
        || state.peer_read_only
        || state.needs_reset
        || (told_before && state.last_sent_heads != before)
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

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{ActorId, ROOT};

    #[test]
    fn changes_sent_one_after_the_other_in_one_chunk_take_the_direct_path() {
        let mut relay = AutoCommit::new().with_actor(ActorId::from([1u8; 16]));
        // Enough history that two new changes are less than a third of the document.
        for n in 0..12 {
            relay
                .put(ROOT, format!("seed{n}"), "x".repeat(40))
                .expect("put");
            relay.commit_with(CommitOptions::default().with_time(n));
        }
        let mut device = relay.fork().with_actor(ActorId::from([2u8; 16]));
        for n in 0..2 {
            device.put(ROOT, format!("edit{n}"), "y").expect("put");
            device.commit_with(CommitOptions::default().with_time(100 + n));
        }
        let (mut relay_state, mut device_state) = (sync::State::new(), sync::State::new());
        let first = relay
            .sync()
            .generate_sync_message(&mut relay_state)
            .expect("first");
        device
            .sync()
            .receive_sync_message(&mut device_state, first)
            .expect("receive");
        let message = device
            .sync()
            .generate_sync_message(&mut device_state)
            .expect("the edits");
        assert_eq!(message.version, MessageVersion::V2);
        assert_eq!(message.changes.len(), 1, "both changes in one chunk");
        assert_eq!(changes_in(&message.changes).map(|c| c.len()), Some(2));

        let path = receive_sync_message_by(&mut relay, &mut relay_state, message).expect("taken");
        assert_eq!(path, ReceivePath::Direct);
        assert_eq!(relay.get_heads(), device.get_heads());
    }

    #[test]
    fn chunk_lengths_past_the_end_or_past_64_bits_do_not_split() {
        let mut long = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0x7f];
        long.extend([0; 10]);
        assert!(split_chunks(&long).is_none());
        let endless = [0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff];
        assert!(split_chunks(&endless).is_none());
        // Ten bytes whose last carries more than the 64th bit.
        assert_eq!(
            uleb128(&[0xff; 9].iter().copied().chain([0x01]).collect::<Vec<_>>()),
            Some((u64::MAX, 10))
        );
        assert_eq!(
            uleb128(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]),
            None
        );
        assert!(changes_in(&sync::ChunkList::from(vec![long])).is_none());
    }

    fn edit(doc: &mut AutoCommit, key: &str, n: i64) {
        doc.put(ROOT, key, n).expect("put");
        doc.commit_with(CommitOptions::default().with_time(1_700_000_000 + n));
    }

    /// The parts of a state the next messages depend on, with the hashes we sent.
    fn parts(state: &sync::State) -> impl PartialEq + std::fmt::Debug {
        (
            state.shared_heads.clone(),
            state.last_sent_heads.clone(),
            state.their_heads.clone(),
            state.their_need.clone(),
            state.their_have.clone(),
            state.in_flight,
            state.their_capabilities.clone(),
            state.peer_read_only,
        )
    }

    #[test]
    fn a_peer_naming_a_change_we_sent_holds_everything_sent_before_it() {
        let hashes: Vec<ChangeHash> = (0..5u8).map(|n| ChangeHash([n; 32])).collect();
        let mut state = sync::State::new();
        let mut sent = SentLog::default();
        for hash in &hashes {
            state.sent_hashes.insert(*hash);
            sent.record(*hash);
        }
        // Its own change among its heads says nothing about ours.
        state.their_heads = Some(vec![ChangeHash([9; 32])]);
        sent.trim(&mut state);
        assert_eq!(state.sent_hashes.len(), 5);
        // It names the third (and its own): the first three are held.
        state.their_heads = Some(vec![ChangeHash([9; 32]), hashes[2]]);
        sent.trim(&mut state);
        assert_eq!(
            state.sent_hashes.iter().copied().collect::<Vec<_>>(),
            hashes[3..].to_vec()
        );
        // Then the last: nothing is kept.
        state.their_heads = Some(vec![hashes[4]]);
        sent.trim(&mut state);
        assert!(state.sent_hashes.is_empty());
        assert!(sent.0.is_empty());
    }

    /// Two peers sync while both keep editing; every message `b` receives is applied both by
    /// Automerge and by [`receive_sync_message`], each to its own copy: the documents and the
    /// states agree, except that ours may keep hashes the peer holds (never one Automerge
    /// keeps, and none once the peer holds our heads).
    #[test]
    fn receiving_matches_automerge() {
        let mut a = AutoCommit::new().with_actor(ActorId::from([1u8; 16]));
        let mut b = AutoCommit::new().with_actor(ActorId::from([2u8; 16]));
        for n in 0..5 {
            edit(&mut a, "a", n);
            edit(&mut b, "b", n);
        }
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let (mut without_changes, mut with_changes) = (0, 0);
        for round in 0..40 {
            if round % 3 == 0 {
                edit(&mut a, "a", 100 + round);
            }
            if round % 5 == 0 {
                edit(&mut b, "b", 200 + round);
            }
            if let Some(m) = a.sync().generate_sync_message(&mut sa) {
                let (mut automerge_doc, mut automerge_state) = (b.clone(), sb.clone());
                automerge_doc
                    .sync()
                    .receive_sync_message(&mut automerge_state, m.clone())
                    .expect("receive");
                let carries_changes = !m.changes.is_empty();
                match receive_common(&mut b, &mut sb, m) {
                    Ok(applied) => {
                        applied.expect("applied");
                        if carries_changes {
                            with_changes += 1;
                        } else {
                            without_changes += 1;
                        }
                        assert_eq!(b.get_heads(), automerge_doc.get_heads(), "round {round}");
                        assert_eq!(parts(&sb), parts(&automerge_state), "round {round}");
                        assert!(sb.sent_hashes.is_superset(&automerge_state.sent_hashes));
                        if sb.their_heads.as_deref() == Some(b.get_heads().as_slice()) {
                            assert!(sb.sent_hashes.is_empty());
                        }
                    }
                    // A whole document in one chunk, say: Automerge's copy goes on.
                    Err(_) => (b, sb) = (automerge_doc, automerge_state),
                }
            }
            if let Some(m) = b.sync().generate_sync_message(&mut sb) {
                a.sync().receive_sync_message(&mut sa, m).expect("receive");
            }
        }
        assert!(
            without_changes >= 5,
            "only {without_changes} without changes"
        );
        assert!(with_changes >= 5, "only {with_changes} with changes");
        assert_eq!(a.get_heads(), b.get_heads());
    }
}
