//! Interop with stock `@automerge/automerge-repo` JavaScript clients: `tests/js/interop.mjs`
//! (stock `Repo` and WebSocket client adapter, credential in `?token=` as a browser sends it)
//! enrolls with an invite, edits the comments document a Rust client created and synced, and
//! creates a document of its own. The relay's history shows the JavaScript edit, a second Rust
//! device syncs it, and a Rust peer asking the relay for the new document by id gets it.
//!
//! Needs `node` and `(cd tests/js && npm ci)`; skipped, with a message, only when `node` is not
//! installed.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use coalition_core::model::DocKind;
use coalition_core::store::Store;
use coalition_core::sync::{Action, ConnId, DocumentId, EngineConfig, Message, PeerId, SyncEngine};
use coalition_core::transport;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::{coalition, coalition_json, credential_of, enroll, RelayProcess};

/// `node --version`, or `None` when node is not installed.
fn node_version() -> Option<String> {
    let out = Command::new("node").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a command to its end, killing it after `timeout`; returns (success, stdout, stderr).
fn run_bounded(mut command: Command, timeout: Duration) -> (bool, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > end {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) => (s.success(), out, err),
        None => (false, out, format!("{err}\n(killed after {timeout:?})")),
    }
}

/// Asks the relay for one document by id, as a Rust peer that does not have it, and returns
/// it once it holds everything the relay said it has (the heads of the relay's last sync
/// message); `None` if the relay says it is unavailable.
fn fetch_doc(server: &str, credential: &str, id: DocumentId) -> Option<AutoCommit> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut ws = transport::ws::connect(server, credential, Duration::from_secs(10))
            .await
            .expect("WebSocket to the relay");
        let mut engine = SyncEngine::new(EngineConfig::new(PeerId::new("js-interop-fetch")));
        let mut docs = HashMap::from([(id, AutoCommit::new())]);
        let conn = ConnId(1);
        let mut actions = engine.connect(conn, Instant::now());
        actions.extend(engine.share_doc(id, &mut docs));
        let mut relay_heads: Option<Vec<automerge::ChangeHash>> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            for action in actions.drain(..) {
                match action {
                    Action::Send { message, .. } => ws
                        .send(WsMessage::Binary(message.encode().into()))
                        .await
                        .expect("send to the relay"),
                    Action::DocumentUnavailable { .. } => return None,
                    Action::Disconnect { reason, .. } => panic!("the relay closed: {reason:?}"),
                    _ => {}
                }
            }
            if let (Some(doc), Some(relay)) = (docs.get_mut(&id), &relay_heads) {
                let mut heads = doc.get_heads();
                heads.sort();
                if !heads.is_empty() && heads == *relay {
                    return docs.remove(&id);
                }
            }
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(bytes)))) => {
                    if let Ok(Message::Sync(m) | Message::Request(m)) = Message::decode(&bytes) {
                        if m.document_id == id {
                            if let Ok(sync) = automerge::sync::Message::decode(&m.data) {
                                let mut heads = sync.heads;
                                heads.sort();
                                relay_heads = Some(heads);
                            }
                        }
                    }
                    actions = engine.receive_bytes(conn, &bytes, Instant::now(), &mut docs);
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("the WebSocket ended: {other:?}"),
                Err(_) => panic!(
                    "{id} did not arrive whole within 60 s: the relay has {relay_heads:?}, we have {:?}",
                    docs.get_mut(&id).map(|d| d.get_heads())
                ),
            }
        }
    })
}

fn str_at<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

#[test]
fn stock_js_client_edits_and_creates_through_the_relay() {
    let Some(node) = node_version() else {
        println!("SKIPPED js_interop: `node` is not installed (CI installs Node 20 and runs `npm ci` in tests/js)");
        return;
    };
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/@automerge/automerge-repo").is_dir(),
        "node {node} is installed but tests/js has no node_modules: run `(cd tests/js && npm ci)`"
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let server = relay.url();
    let coalition_id = relay.admin(&[
        "create-coalition",
        "--state",
        "BA",
        "--name",
        "BiH coalition",
        "--org",
        "MCA-BA",
        "--org-name",
        "Ministry of Civil Affairs",
        "--user",
        "amra",
    ]);
    let invite = |user: &str, org: &str, role: &str| {
        relay.admin(&[
            "invite",
            "--coalition",
            &coalition_id,
            "--user",
            user,
            "--org",
            org,
            "--org-name",
            org,
            "--role",
            role,
        ])
    };
    let coordinator_invite = invite("amra", "MCA-BA", "coordinator");
    let js_invite = invite("jana", "NPA", "operator");
    let observer_invite = invite("olga", "CMC", "observer");

    // A Rust device enrolls, fetches the coalition, comments and syncs.
    let rust = tmp.path().join("rust");
    enroll(&rust, &server, &coordinator_invite, "laptop");
    coalition(&rust, &["sync", "--timeout", "30"]);
    coalition(&rust, &["comment", "--text", "Written in Rust"]);
    coalition(&rust, &["sync", "--timeout", "30"]);
    let coalition_doc: DocumentId = coalition_id.parse().expect("coalition id");
    let credential = credential_of(&rust);
    let comments_doc = Store::open(&rust)
        .expect("open the Rust store")
        .load(&coalition_doc)
        .expect("coalition on the device")
        .docs()
        .find(|d| d.kind == DocKind::Comments)
        .expect("a comments document")
        .id;
    let plan_doc = Store::open(&rust)
        .expect("open the Rust store")
        .load(&coalition_doc)
        .expect("coalition on the device")
        .docs()
        .find(|d| d.kind == DocKind::Plan)
        .expect("a plan")
        .id;

    // The stock JavaScript client.
    let mut command = Command::new("node");
    command
        .current_dir(&js)
        .arg("interop.mjs")
        .args(["--server", &server, "--invite", &js_invite])
        .args(["--doc", &comments_doc.to_string()])
        .args(["--coalition", &coalition_id])
        // The operator also writes a need, which only the mine action centre may: the relay
        // must refuse it from a stock client as from ours.
        .args(["--forbidden-doc", &plan_doc.to_string()])
        .args(["--review-credential", &credential])
        .arg("--storage")
        .arg(tmp.path().join("js-storage"))
        .args(["--timeout-ms", "30000"]);
    let (ok, stdout, stderr) = run_bounded(command, Duration::from_secs(60));
    println!("interop.mjs ({node}) said:\n{stderr}");
    assert!(
        ok,
        "interop.mjs failed:\n{stderr}\nstdout: {stdout}\nrelay log:\n{}",
        relay.log_text()
    );
    let js: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("interop.mjs printed no JSON ({e}): {stdout}"));
    let (comment_id, note_id) = (str_at(&js, "comment"), str_at(&js, "note"));
    assert_eq!(str_at(&js, "edited"), comments_doc.to_string());
    let created: DocumentId = str_at(&js, "created")
        .parse()
        .expect("the created id is a document id");

    // The relay's history shows the JavaScript edit, attributed.
    let history = relay.api(&credential, &coalition_id, "history");
    let entry = history
        .as_array()
        .expect("history is a list")
        .iter()
        .find(|e| e["id"] == comment_id)
        .unwrap_or_else(|| {
            panic!("the relay's history lacks the JS comment {comment_id}: {history:#}")
        });
    assert_eq!(entry["doc"], comments_doc.to_string(), "{entry:#}");
    assert_eq!(entry["org"], "NPA", "{entry:#}");
    assert_eq!(entry["user"], "jana", "{entry:#}");
    // The consolidated report still builds with the JavaScript changes in.
    relay.api(&credential, &coalition_id, "report");

    // The forbidden need was refused, kept in quarantine with its author, and is not in the
    // plan the relay serves.
    let held = &js["quarantined"];
    assert_eq!(
        held["reason"], "NPA (operator) may not write needs in the plan document",
        "{held:#}"
    );
    assert_eq!(held["status"], "held", "{held:#}");
    assert_eq!(held["doc_id"], plan_doc.to_string(), "{held:#}");
    assert!(
        held["author"]
            .as_str()
            .is_some_and(|a| a.starts_with("jana (NPA)")),
        "the quarantine names the author: {held:#}"
    );
    assert!(
        !history
            .as_array()
            .expect("history")
            .iter()
            .any(|e| e["entity"] == "needs"),
        "the relay's history shows the refused need: {history:#}"
    );

    // A second Rust device, enrolled now, gets both comments.
    let observer = tmp.path().join("observer");
    enroll(&observer, &server, &observer_invite, "tablet");
    coalition(&observer, &["sync", "--timeout", "30"]);
    let comments = coalition_json(&observer, &["comments"]);
    let comments = comments.as_array().expect("comments list");
    let theirs = comments
        .iter()
        .find(|c| c["id"] == comment_id)
        .unwrap_or_else(|| panic!("a Rust device lacks the JS comment: {comments:#?}"));
    assert_eq!(theirs["org"], "NPA");
    assert_eq!(theirs["user"], "jana");
    assert_eq!(theirs["kind"], "comment");
    assert!(
        comments.iter().any(|c| c["text"] == "Written in Rust"),
        "{comments:#?}"
    );

    // A Rust peer asking the relay for the JavaScript client's new document gets it.
    let doc = fetch_doc(&server, &credential, created)
        .unwrap_or_else(|| panic!("the relay says {created} is unavailable"));
    let (kind, owner, coalition_text) =
        coalition_core::coalition::describe(&doc).expect("the new document describes itself");
    assert_eq!(kind, DocKind::Comments);
    assert_eq!(owner.as_deref(), Some("NPA"));
    assert_eq!(coalition_text, coalition_id);
    let notes = coalition_core::coalition::read_collection::<coalition_core::model::Comment>(
        &doc,
        coalition_core::model::keys::COMMENTS,
    )
    .expect("the new document's comments decode as Rust comments");
    assert!(notes.contains_key(note_id), "{notes:#?}");
}
