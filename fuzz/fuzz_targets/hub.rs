//! Fuzz target: a session of frames (see `coalition_tests::bad_peer`) played against a real
//! relay hub after a valid `join`, on a fresh copy of a store holding two small coalitions.
//!
//! The rig fails the input if the hub thread dies or catches a panic, sends a frame that does
//! not decode, takes too long, or afterwards no longer serves an honest peer its coalition.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use coalition_core::sync::DocumentId;
use coalition_tests::bad_peer::{fixtures_dir, split_frames, Fixtures, HubRig};
use libfuzzer_sys::fuzz_target;

/// The store every input starts from, made once per process.
fn template() -> &'static (PathBuf, DocumentId) {
    static TEMPLATE: OnceLock<(PathBuf, DocumentId)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("coalition-fuzz-hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("template directory");
        let mut fixtures = Fixtures::load(&fixtures_dir()).expect("fixtures");
        fixtures.store_template(&dir).expect("template store");
        (dir, *fixtures.ours.id())
    })
}

fuzz_target!(|data: &[u8]| {
    let (template, ours) = template();
    let mut rig = HubRig::start(template, *ours).expect("start a hub");
    if let Err(e) = rig.session(&split_frames(data)) {
        panic!("{e:#}");
    }
    if let Err(e) = rig.serves_honest_peer() {
        panic!("{e:#}");
    }
});
