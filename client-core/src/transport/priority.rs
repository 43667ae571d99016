//! [`Outbox`]: the order frames leave in, smallest first across documents.
//!
//! The session queues frames in the order the engine made them, which after connecting is
//! every document in id order: a device with one new comment and a first download of a large
//! plan would send (and, over one pipe, wait for) whichever came first. The outbox keeps one
//! queue per document, in order, sends messages that name no document (the handshake) first,
//! and otherwise takes the document whose next frame is the smallest. Small recent changes
//! go before large initial loads, and a byte budget is spent on as many documents as it can
//! carry.

use std::collections::{BTreeMap, VecDeque};

use crate::sync::{DocumentId, Message};

/// Frames waiting to be sent. See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    control: VecDeque<Vec<u8>>,
    docs: BTreeMap<DocumentId, VecDeque<Vec<u8>>>,
}

impl Outbox {
    /// Queues a frame behind the earlier frames of its document.
    pub(crate) fn push(&mut self, frame: Vec<u8>) {
        match Message::decode(&frame).ok().and_then(|m| m.document_id()) {
            Some(doc) => self.docs.entry(doc).or_default().push_back(frame),
            None => self.control.push_back(frame),
        }
    }

    /// The size of the frame [`Self::pop`] would return.
    pub(crate) fn peek_len(&self) -> Option<usize> {
        if let Some(f) = self.control.front() {
            return Some(f.len());
        }
        self.smallest().map(|(_, len)| len)
    }

    /// The next frame to send.
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        if let Some(f) = self.control.pop_front() {
            return Some(f);
        }
        let (doc, _) = self.smallest()?;
        let queue = self.docs.get_mut(&doc)?;
        let frame = queue.pop_front();
        if queue.is_empty() {
            self.docs.remove(&doc);
        }
        frame
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.control.is_empty() && self.docs.is_empty()
    }

    fn smallest(&self) -> Option<(DocumentId, usize)> {
        self.docs
            .iter()
            .filter_map(|(doc, q)| q.front().map(|f| (*doc, f.len())))
            .min_by_key(|(_, len)| *len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::message::{JoinMessage, SyncMessage};
    use crate::sync::PeerId;

    fn sync(doc: DocumentId, size: usize) -> Vec<u8> {
        Message::Sync(SyncMessage {
            sender_id: PeerId::from("a"),
            target_id: PeerId::from("b"),
            document_id: doc,
            data: vec![7; size],
        })
        .encode()
    }

    #[test]
    fn handshake_first_then_small_documents_before_large_ones_in_order_per_document() {
        let big = DocumentId::new_random();
        let small = DocumentId::new_random();
        let mut outbox = Outbox::default();
        let first_big = sync(big, 50_000);
        let second_big = sync(big, 10);
        let one_small = sync(small, 200);
        let join = Message::Join(JoinMessage {
            sender_id: PeerId::from("a"),
            peer_metadata: Default::default(),
            supported_protocol_versions: vec!["1".into()],
            skips_in_step: false,
        })
        .encode();
        outbox.push(first_big.clone());
        outbox.push(second_big.clone());
        outbox.push(one_small.clone());
        outbox.push(join.clone());
        assert_eq!(outbox.peek_len(), Some(join.len()));
        assert_eq!(outbox.pop(), Some(join));
        assert_eq!(outbox.pop(), Some(one_small));
        // The big document's small second frame waits for its first: order within a document
        // is the protocol's.
        assert_eq!(outbox.pop(), Some(first_big));
        assert_eq!(outbox.pop(), Some(second_big));
        assert!(outbox.is_empty());
        assert_eq!(outbox.pop(), None);
    }
}
