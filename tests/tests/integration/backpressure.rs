//! A device that stops reading what the relay sends it (a link gone quiet, a phone whose app
//! is in the background) while others keep editing: the relay holds back what it would send
//! that device instead of queueing a message per edit, and once the device reads again, sends
//! it everything it missed in a few messages.

use std::time::Duration;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{AutoCommit, ROOT};
use coalition_core::sync::message::SyncMessage;
use coalition_core::sync::{DocumentId, Message, PeerId};
use coalition_tests::bad_peer::{fixtures_dir, join, Fixtures, HubRig, RigConn, RELAY_PEER};

/// Edits the writer makes while the reader does not read.
const EDITS: usize = 600;

/// Queued frames a held connection may still collect: what was queued when it was held (the
/// relay holds a connection beyond 256), and frames of batches prepared before.
const MAX_QUEUED: usize = 320;

struct Device {
    peer: &'static str,
    conn: RigConn,
    doc: AutoCommit,
    state: sync::State,
}

impl Device {
    fn connect(rig: &mut HubRig, peer: &'static str, doc_id: DocumentId) -> Device {
        let conn = rig.open().expect("open");
        rig.send(conn.conn, join(peer)).expect("join");
        let mut device = Device {
            peer,
            conn,
            doc: AutoCommit::new(),
            state: sync::State::new(),
        };
        let first = device
            .doc
            .sync()
            .generate_sync_message(&mut device.state)
            .expect("a first message");
        let request = Message::Request(device.payload(doc_id, first.encode()));
        rig.send(device.conn.conn, request.encode())
            .expect("request");
        device
    }

    fn payload(&self, doc_id: DocumentId, data: Vec<u8>) -> SyncMessage {
        SyncMessage {
            sender_id: PeerId::from(self.peer),
            target_id: PeerId::from(RELAY_PEER),
            document_id: doc_id,
            data,
        }
    }

    /// Sends what the device has to say about the document, if anything.
    fn answer(&mut self, rig: &mut HubRig, doc_id: DocumentId) {
        let next = self.doc.sync().generate_sync_message(&mut self.state);
        if let Some(m) = next {
            let frame = Message::Sync(self.payload(doc_id, m.encode())).encode();
            rig.send(self.conn.conn, frame).expect("send");
        }
    }

    /// Reads what the relay sent (waiting up to `wait` for each message) and answers it,
    /// until nothing comes; returns how many sync messages arrived.
    fn settle(&mut self, rig: &mut HubRig, doc_id: DocumentId, wait: Duration) -> usize {
        let mut syncs = 0;
        while let Some(message) = rig.recv(&mut self.conn, wait).expect("recv") {
            if let Message::Sync(m) = message {
                assert_eq!(m.document_id, doc_id);
                syncs += 1;
                let data = sync::Message::decode(&m.data).expect("a sync message");
                self.doc
                    .sync()
                    .receive_sync_message(&mut self.state, data)
                    .expect("apply");
                self.answer(rig, doc_id);
            }
        }
        syncs
    }
}

#[test]
fn a_device_that_stops_reading_is_held_back_and_caught_up_in_one_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fixtures = Fixtures::load(&fixtures_dir()).expect("fixtures");
    fixtures.store_template(dir.path()).expect("template store");
    let ours = *fixtures.ours.id();
    let mut rig = HubRig::start(dir.path(), ours).expect("start a hub");
    let wait = Duration::from_millis(300);

    let mut writer = Device::connect(&mut rig, "writer", ours);
    writer.settle(&mut rig, ours, wait);
    let mut reader = Device::connect(&mut rig, "reader", ours);
    reader.settle(&mut rig, ours, wait);
    assert!(
        !reader.doc.get_heads().is_empty(),
        "the reader has the manifest"
    );
    assert_eq!(reader.doc.get_heads(), writer.doc.get_heads());

    // The reader stops reading; the writer edits and keeps up with the relay's answers.
    for n in 0..EDITS {
        writer.doc.put(ROOT, "progress", n as i64).expect("put");
        writer
            .doc
            .commit_with(CommitOptions::default().with_time(1_800_000_000 + n as i64));
        writer.answer(&mut rig, ours);
        writer.settle(&mut rig, ours, Duration::ZERO);
    }
    writer.settle(&mut rig, ours, wait);
    assert!(
        reader.conn.queued() <= MAX_QUEUED,
        "{} frames queued for a device that does not read ({EDITS} edits)",
        reader.conn.queued()
    );
    assert!(
        rig.metrics()
            .connections_held
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // The writer's edits, and the answers to them, went as they arrived: of the 600, at most
    // the first (a young document's first change may come as the whole document) took
    // Automerge's walk of the document's history, besides the devices' first exchanges.
    let metrics = rig.metrics();
    let general = |m: &std::sync::atomic::AtomicU64| m.load(std::sync::atomic::Ordering::Relaxed);
    assert!(general(&metrics.general_receives) <= 2);
    assert!(general(&metrics.general_messages) <= 4);
    // It reads again: what was queued, then, released at the hub's next turn, the rest.
    let queued = reader.conn.queued();
    let mut received = 0;
    for _ in 0..3 {
        received += reader.settle(&mut rig, ours, wait);
        rig.tick().expect("tick");
    }
    received += reader.settle(&mut rig, ours, wait);
    assert_eq!(reader.doc.get_heads(), writer.doc.get_heads(), "caught up");
    assert!(
        received <= queued + 4,
        "{received} messages to catch up after {queued} queued"
    );
}
