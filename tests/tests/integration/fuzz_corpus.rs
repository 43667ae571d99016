//! The fuzz targets' inputs as ordinary tests, so every run exercises them without nightly:
//! the committed seed corpus and every regression input found by fuzzing (`fuzz/corpus/`,
//! `fuzz/regressions/`) go through the decoder and through a real relay hub, and a bounded
//! proptest mutates the seed sessions.
//!
//! `COALITION_WRITE_CORPUS=1 cargo test -p coalition-tests --test integration fuzz_corpus`
//! rewrites the seed corpus from the fixtures (and makes the fixtures if they are missing).

use std::path::PathBuf;
use std::sync::OnceLock;

use coalition_core::model::DocKind;
use coalition_core::sync::{DocumentId, Message};
use coalition_tests::bad_peer::{
    corpus_dir, fixtures_dir, join_frames, seed_sessions, split_frames, Fixtures, HubRig,
    SESSION_PEER,
};
use proptest::prelude::*;

/// The regression inputs, `fuzz/regressions/<target>/`.
fn regressions_dir() -> PathBuf {
    corpus_dir().join("../regressions")
}

/// Every file of the corpus and the regressions of a target, by path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [corpus_dir().join(target), regressions_dir().join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read a corpus directory").path();
            if path.is_file() && path.file_name().is_none_or(|n| n != "README.md") {
                let bytes = std::fs::read(&path).expect("read a corpus file");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// A store holding the fixtures, made once for all the tests of this module.
fn template() -> &'static (tempfile::TempDir, DocumentId) {
    static TEMPLATE: OnceLock<(tempfile::TempDir, DocumentId)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fixtures = Fixtures::load(&fixtures_dir()).expect("fixtures");
        fixtures.store_template(dir.path()).expect("template store");
        let ours = *fixtures.ours.id();
        (dir, ours)
    })
}

fn rig() -> HubRig {
    let (dir, ours) = template();
    HubRig::start(dir.path(), *ours).expect("start a hub")
}

/// What the decoder must do with any frame: return, with a message when it refuses; and what
/// it accepts must come back unchanged through our own encoding.
fn check_decoder(bytes: &[u8]) -> Result<(), String> {
    let _ = automerge::sync::Message::decode(bytes);
    match Message::decode(bytes) {
        Ok(message) => {
            let again = Message::decode(&message.encode())
                .map_err(|e| format!("our encoding of {message:?} does not decode: {e}"))?;
            if again != message {
                return Err(format!("{message:?} became {again:?} through encoding"));
            }
            if let Message::Sync(m) | Message::Request(m) = &message {
                let _ = automerge::sync::Message::decode(&m.data);
            }
            Ok(())
        }
        Err(error) if error.to_string().is_empty() => Err(format!("{error:?} has no message")),
        Err(_) => Ok(()),
    }
}

#[test]
fn every_corpus_and_regression_frame_goes_through_the_decoder() {
    let files = inputs("decode");
    assert!(
        files.len() >= 10,
        "the decoder's seed corpus is missing: {} files",
        files.len()
    );
    let mut decoded = 0;
    for (path, bytes) in &files {
        check_decoder(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        decoded += usize::from(Message::decode(bytes).is_ok());
    }
    // The seeds are real frames: most must decode, or the fuzzer starts from noise.
    assert!(
        decoded * 2 > files.len(),
        "only {decoded} of {} corpus frames decode",
        files.len()
    );
}

#[test]
fn every_corpus_and_regression_session_leaves_the_hub_serving() {
    let files = inputs("hub");
    assert!(
        files.len() >= 10,
        "the hub's seed corpus is missing: {} files",
        files.len()
    );
    for (path, bytes) in &files {
        let mut rig = rig();
        rig.session(&split_frames(bytes))
            .and_then(|_| rig.serves_honest_peer())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
}

/// The seeds do what they are named for, so the corpus reaches the paths it is meant to.
#[test]
fn seed_sessions_reach_what_they_are_named_for() {
    let fixtures = Fixtures::load(&fixtures_dir()).expect("fixtures");
    let ours = *fixtures.ours.id();
    let foreign = *fixtures.other.id();
    let comments = fixtures.ours_doc(DocKind::Comments).expect("comments");
    let seed = |name: &str| {
        std::fs::read(corpus_dir().join("hub").join(name))
            .unwrap_or_else(|e| panic!("seed {name}: {e}"))
    };
    let play = |name: &str| {
        let mut rig = rig();
        let out = rig
            .session(&split_frames(&seed(name)))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        (rig, out)
    };
    let unavailable = |out: &[Message], doc: DocumentId| {
        out.iter()
            .any(|m| matches!(m, Message::DocUnavailable(d) if d.document_id == doc))
    };
    let synced = |out: &[Message], doc: DocumentId| {
        out.iter().any(|m| {
            matches!(m, Message::Sync(s) if s.document_id == doc && s.target_id.as_str() == SESSION_PEER)
        })
    };

    let (_, out) = play("request-manifest");
    assert!(synced(&out, ours), "request-manifest: {out:?}");
    let (_, out) = play("request-foreign");
    assert!(unavailable(&out, foreign), "request-foreign: {out:?}");
    assert!(!synced(&out, foreign), "request-foreign: {out:?}");

    let (rig, out) = play("sync-new-comment");
    let before = fixtures
        .ours
        .doc(&comments)
        .expect("comments")
        .doc
        .clone()
        .get_heads();
    let after = rig.stored_heads(&comments).expect("stored heads");
    assert_ne!(
        after, before,
        "sync-new-comment: the comment was not stored ({out:?})"
    );

    let (rig, out) = play("new-doc-ours");
    let new_ours = DocumentId::from_bytes([0x6c; 16]);
    assert!(!unavailable(&out, new_ours), "new-doc-ours: {out:?}");
    assert!(
        !rig.stored_heads(&new_ours).expect("heads").is_empty(),
        "new-doc-ours: a new document of ours was not stored"
    );
    for (name, id) in [("new-doc-foreign", 0x6d), ("new-manifest", 0x6b)] {
        let (rig, out) = play(name);
        let doc = DocumentId::from_bytes([id; 16]);
        assert!(unavailable(&out, doc), "{name}: {out:?}");
        assert!(
            rig.stored_heads(&doc).expect("heads").is_empty(),
            "{name}: a refused document was stored"
        );
    }

    let (_, out) = play("empty-frame");
    assert!(
        matches!(out.as_slice(), [Message::Peer(_), Message::Error(e)] if e.message == "malformed CBOR"),
        "empty-frame: {out:?}"
    );
}

/// The committed seed corpus is what the fixtures give today (or is written, on request).
#[test]
fn seed_corpus_matches_the_fixtures() {
    let write = std::env::var_os("COALITION_WRITE_CORPUS").is_some();
    let fixtures_dir = fixtures_dir();
    if write && !fixtures_dir.join("ours.coalition").exists() {
        Fixtures::create()
            .and_then(|mut f| f.write(&fixtures_dir))
            .expect("write the fixtures");
    }
    let mut fixtures = Fixtures::load(&fixtures_dir).expect("fixtures");
    let sessions = seed_sessions(&mut fixtures).expect("seed sessions");
    let mut frames: Vec<(String, Vec<u8>)> =
        vec![("join".into(), coalition_tests::bad_peer::join(SESSION_PEER))];
    for (name, session) in &sessions {
        for (i, frame) in session.iter().enumerate() {
            frames.push((format!("{name}-{i}"), frame.clone()));
        }
    }
    let expected: Vec<(PathBuf, Vec<u8>)> = sessions
        .iter()
        .map(|(name, session)| (corpus_dir().join("hub").join(name), join_frames(session)))
        .chain(
            frames
                .into_iter()
                .map(|(name, frame)| (corpus_dir().join("decode").join(name), frame)),
        )
        .collect();
    for (path, bytes) in &expected {
        if write {
            std::fs::create_dir_all(path.parent().expect("a corpus directory"))
                .expect("create the corpus directory");
            std::fs::write(path, bytes).expect("write a seed");
        }
        let committed = std::fs::read(path).unwrap_or_default();
        assert!(
            committed == *bytes,
            "{} differs from what the fixtures give; rewrite the seeds with \
             COALITION_WRITE_CORPUS=1",
            path.display()
        );
    }
}

fn seeds(target: &str) -> &'static [Vec<u8>] {
    static HUB: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    static DECODE: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let cell = if target == "hub" { &HUB } else { &DECODE };
    cell.get_or_init(|| {
        inputs(target)
            .into_iter()
            .filter(|(path, _)| path.starts_with(corpus_dir()))
            .map(|(_, bytes)| bytes)
            .collect()
    })
}

/// A seed with bytes overwritten, cut short, or with frames of another seed spliced in.
fn mutate(
    seeds: &[Vec<u8>],
    pick: usize,
    edits: &[(usize, u8)],
    cut: Option<usize>,
    splice: Option<usize>,
) -> Vec<u8> {
    let mut bytes = seeds[pick % seeds.len()].clone();
    if let Some(other) = splice {
        bytes.extend_from_slice(&seeds[other % seeds.len()]);
    }
    if !bytes.is_empty() {
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = *value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seed_frames_never_break_the_decoder(
        pick in any::<usize>(),
        edits in edits(),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(seeds("decode"), pick, &edits, cut, None);
        prop_assert!(check_decoder(&bytes).is_ok(), "{:?}", check_decoder(&bytes));
    }
}

proptest! {
    // Each case starts a hub on a fresh copy of a small store (about a millisecond).
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seed_sessions_leave_the_hub_serving(
        pick in any::<usize>(),
        edits in edits(),
        cut in proptest::option::of(any::<usize>()),
        splice in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(seeds("hub"), pick, &edits, cut, splice);
        let mut rig = rig();
        let result = rig.session(&split_frames(&bytes)).and_then(|_| rig.serves_honest_peer());
        prop_assert!(result.is_ok(), "{:#}", result.err().map(|e| format!("{e:#}")).unwrap_or_default());
    }
}
