//! The table of bad and forbidden inputs (issue 4), against a real relay process.
//!
//! Each [`Case`] is one row: what a peer sends (a credential or invite over HTTP, or frames on
//! an authenticated WebSocket, after a valid `join` or in its place) and the exact outcome the
//! relay must give: the HTTP status and stable code, the protocol messages it answers with
//! (`error` texts, `doc-unavailable`), and whether it then closes the connection (with which
//! code and reason) or keeps serving it. After every row the relay must still run, serve an
//! honest peer its coalition, and hold exactly what it stored before the row.
//!
//! A connection that stays open is told apart from a slow relay with a probe: after the row's
//! frames the peer requests a document nobody has, and the relay's `doc-unavailable` for it
//! (answers come in order) ends the row. Rows are plain data plus a function building the
//! frames, so adding one is adding an entry to [`cases`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use automerge::sync::SyncDoc;
use automerge::AutoCommit;
use coalition_core::model::{Comment, CommentKind, DocKind};
use coalition_core::store::Store;
use coalition_core::sync::message::{JoinMessage, PeerMetadata, SyncMessage};
use coalition_core::sync::{DocumentId, Message, PeerId};
use coalition_core::{Coalition, Edit, Identity};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::relay_offline::coalition_with_invites;
use crate::support::{
    change_of, coalition_json, coalition_server, credential_of, enroll, history_changes, must_sync,
    RelayProcess,
};

/// The peer id the rows' connections join with.
const BAD_PEER: &str = "bad-peer";
/// The peer id of the honest peer that checks the relay after every row.
const HONEST_PEER: &str = "honest-peer";
/// The document a row's probe requests: nobody has it.
const PROBE_DOC: DocumentId = DocumentId::from_bytes([0x9e; 16]);
/// How long a row may take before the relay counts as hung.
const ROW_TIMEOUT: Duration = Duration::from_secs(60);
/// `wss::MAX_FRAME` of the relay: 64 MiB.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// One answer of the relay, reduced to what a row asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `peer`, addressed to this peer id.
    Peer(String),
    /// `error` with this text.
    Error(String),
    /// `doc-unavailable` for this document.
    Unavailable(DocumentId),
    /// `sync` about this document, addressed to this peer id.
    Sync(DocumentId, String),
    /// Any other message type.
    Other(&'static str),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The relay closed it with this code and reason.
    Closed(u16, String),
    /// The relay answered the probe: the connection still serves.
    Open,
    /// The connection broke without a close frame.
    Dropped,
}

/// What the relay did with a row's input.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Refused over HTTP, before any frame: status and stable error code.
    Http(u16, String),
    /// These answers, then this end.
    Answered(Vec<Answer>, End),
}

/// What a row sends.
enum Input {
    /// Upgrade `/sync` with this credential (or none).
    Credential(fn(&Ctx) -> Option<String>),
    /// `POST /api/v1/enroll` with this invite code.
    Invite(fn(&Ctx) -> String),
    /// Frames on the honest coordinator's authenticated WebSocket; after a valid `join` (whose
    /// `peer` answer the runner checks first) when `join` is true, else in its place.
    Frames {
        join: bool,
        frames: fn(&Ctx) -> Vec<WsMessage>,
    },
    /// A scripted exchange for rows that need more than frames (a revocation mid-connection).
    Script(fn(&mut Ctx) -> Outcome),
}

/// One row of the table.
struct Case {
    name: &'static str,
    input: Input,
    expect: fn(&Ctx) -> Outcome,
}

/// The relay, the coalitions and the credentials the rows use.
struct Ctx {
    relay: RelayProcess,
    _tmp: tempfile::TempDir,
    /// A Rust device of our coalition's coordinator, enrolled with the CLI.
    honest: PathBuf,
    /// Its credential.
    cred: String,
    /// Our coalition and its documents.
    ours: DocumentId,
    ours_plan: DocumentId,
    /// Another coalition the coordinator's device may not see, and its comments document.
    foreign: DocumentId,
    foreign_comments: DocumentId,
    /// Sync messages built from the stored documents.
    foreign_heads: Vec<u8>,
    foreign_change: Vec<u8>,
    new_manifest: (DocumentId, Vec<u8>),
    new_foreign_doc: (DocumentId, Vec<u8>),
    /// The relay's peer id, from its `peer` answer.
    relay_peer: String,
    /// A revoked device's credential.
    revoked_cred: String,
    /// Invites: already used, expired.
    used_invite: String,
    expired_invite: String,
    /// A device that a script row revokes while it is connected.
    doomed: (String, String),
    rt: tokio::runtime::Runtime,
}

fn answers(list: &[Answer], end: End) -> Outcome {
    Outcome::Answered(list.to_vec(), end)
}

fn closed(code: u16, reason: &str) -> End {
    End::Closed(code, reason.to_string())
}

/// An `error` and a protocol-error close: what a malformed or out-of-place frame gets.
fn protocol_error(text: &str) -> Outcome {
    answers(
        &[Answer::Error(text.to_string())],
        closed(1002, "protocol violation"),
    )
}

fn http(status: u16, code: &str) -> Outcome {
    Outcome::Http(status, code.to_string())
}

fn cbor(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("write CBOR to a Vec");
    out
}

/// A CBOR map from (key, value) pairs.
fn map(entries: Vec<(&str, ciborium::Value)>) -> Vec<u8> {
    cbor(&ciborium::Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (ciborium::Value::Text(k.into()), v))
            .collect(),
    ))
}

fn text(s: &str) -> ciborium::Value {
    ciborium::Value::Text(s.into())
}

fn bin(bytes: Vec<u8>) -> WsMessage {
    WsMessage::Binary(bytes.into())
}

/// The first sync message of a peer that has nothing.
fn empty_sync() -> Vec<u8> {
    AutoCommit::new()
        .sync()
        .generate_sync_message(&mut automerge::sync::State::new())
        .expect("a fresh state has a first message")
        .encode()
}

fn join_frame(peer: &str, versions: &[&str]) -> Vec<u8> {
    Message::Join(JoinMessage {
        sender_id: PeerId::from(peer),
        peer_metadata: PeerMetadata {
            storage_id: None,
            is_ephemeral: true,
        },
        supported_protocol_versions: versions.iter().map(|v| v.to_string()).collect(),
        skips_in_step: false,
    })
    .encode()
}

impl Ctx {
    fn sync_as(&self, kind: &str, sender: &str, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
        let m = SyncMessage {
            sender_id: PeerId::from(sender),
            target_id: PeerId::from(self.relay_peer.as_str()),
            document_id: doc,
            data,
        };
        match kind {
            "request" => Message::Request(m).encode(),
            _ => Message::Sync(m).encode(),
        }
    }

    fn sync(&self, kind: &str, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
        self.sync_as(kind, BAD_PEER, doc, data)
    }

    /// A `sync`/`request` as a CBOR map with some fields replaced or removed (`None`).
    fn sync_with(&self, kind: &str, changes: &[(&str, Option<ciborium::Value>)]) -> Vec<u8> {
        let mut fields: Vec<(&str, ciborium::Value)> = vec![
            ("type", text(kind)),
            ("senderId", text(BAD_PEER)),
            ("targetId", text(&self.relay_peer)),
            ("documentId", text(&self.ours.to_string())),
            ("data", ciborium::Value::Bytes(empty_sync())),
        ];
        for (key, value) in changes {
            fields.retain(|(k, _)| k != key);
            if let Some(v) = value {
                fields.push((key, v.clone()));
            }
        }
        map(fields)
    }
}

/// The table. Expected texts are the relay's today (`client-core/src/sync/message.rs`,
/// `engine.rs`, `server/src/hub.rs`, `server/src/error.rs`).
fn cases() -> Vec<Case> {
    vec![
        // --- Credentials and invites ---
        Case {
            name: "no credential",
            input: Input::Credential(|_| None),
            expect: |_| http(401, "unauthorized"),
        },
        Case {
            name: "unknown credential",
            input: Input::Credential(|_| Some("cred-0000".into())),
            expect: |_| http(401, "unauthorized"),
        },
        Case {
            name: "credential of a revoked device",
            input: Input::Credential(|c| Some(c.revoked_cred.clone())),
            expect: |_| http(403, "device_revoked"),
        },
        Case {
            name: "replayed invite",
            input: Input::Invite(|c| c.used_invite.clone()),
            expect: |_| http(409, "invite_used"),
        },
        Case {
            name: "expired invite",
            input: Input::Invite(|c| c.expired_invite.clone()),
            expect: |_| http(410, "invite_expired"),
        },
        Case {
            name: "unknown invite",
            input: Input::Invite(|_| format!("inv-{}", "0".repeat(40))),
            expect: |_| http(404, "invalid_invite"),
        },
        Case {
            name: "device revoked while connected",
            input: Input::Script(revoke_while_connected),
            expect: |_| {
                answers(
                    &[Answer::Error(
                        "device_revoked: this device was revoked".into(),
                    )],
                    closed(1008, "device revoked"),
                )
            },
        },
        // --- The handshake ---
        Case {
            name: "message before join",
            input: Input::Frames {
                join: false,
                frames: |c| vec![bin(c.sync("request", c.ours, empty_sync()))],
            },
            expect: |_| protocol_error("unexpected `request` message while waiting for `join`"),
        },
        Case {
            name: "peer instead of join",
            input: Input::Frames {
                join: false,
                frames: |c| {
                    vec![bin(map(vec![
                        ("type", text("peer")),
                        ("senderId", text(BAD_PEER)),
                        ("targetId", text(&c.relay_peer)),
                        ("selectedProtocolVersion", text("1")),
                    ]))]
                },
            },
            expect: |_| protocol_error("unexpected `peer` message while waiting for `join`"),
        },
        Case {
            name: "wrong protocol version in join",
            input: Input::Frames {
                join: false,
                frames: |_| vec![bin(join_frame(BAD_PEER, &["2"]))],
            },
            expect: |_| {
                answers(
                    &[Answer::Error("unsupported protocol version".into())],
                    closed(1002, "unsupported protocol version"),
                )
            },
        },
        Case {
            name: "join with an empty version list",
            input: Input::Frames {
                join: false,
                frames: |_| vec![bin(join_frame(BAD_PEER, &[]))],
            },
            expect: |_| {
                answers(
                    &[Answer::Error("unsupported protocol version".into())],
                    closed(1002, "unsupported protocol version"),
                )
            },
        },
        Case {
            name: "join without senderId",
            input: Input::Frames {
                join: false,
                frames: |_| {
                    vec![bin(map(vec![
                        ("type", text("join")),
                        (
                            "supportedProtocolVersions",
                            ciborium::Value::Array(vec![text("1")]),
                        ),
                    ]))]
                },
            },
            expect: |_| protocol_error("field `senderId` is missing"),
        },
        Case {
            name: "join twice",
            input: Input::Frames {
                join: true,
                frames: |_| vec![bin(join_frame(BAD_PEER, &["1"]))],
            },
            expect: |_| answers(&[], End::Open),
        },
        // --- Malformed frames ---
        Case {
            name: "malformed CBOR",
            input: Input::Frames {
                join: true,
                frames: |_| vec![bin(vec![0xff, 0xfe, 0x00, 0x13, 0x37])],
            },
            expect: |_| protocol_error("malformed CBOR"),
        },
        Case {
            name: "truncated frame",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    let full = c.sync("sync", c.foreign_comments, c.foreign_change.clone());
                    vec![bin(full[..full.len() / 2].to_vec())]
                },
            },
            expect: |_| protocol_error("malformed CBOR"),
        },
        Case {
            name: "empty frame",
            input: Input::Frames {
                join: true,
                frames: |_| vec![bin(Vec::new())],
            },
            expect: |_| protocol_error("malformed CBOR"),
        },
        Case {
            name: "text frame instead of binary",
            input: Input::Frames {
                join: true,
                frames: |_| vec![WsMessage::Text(r#"{"type":"request"}"#.into())],
            },
            expect: |_| protocol_error("malformed CBOR"),
        },
        Case {
            name: "CBOR that is not a map",
            input: Input::Frames {
                join: true,
                frames: |_| vec![bin(vec![0x18, 0x2a])],
            },
            expect: |_| protocol_error("a message is a CBOR map"),
        },
        Case {
            name: "bytes after the message",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    let mut frame = c.sync("request", c.ours, empty_sync());
                    frame.extend_from_slice(&[0, 0]);
                    vec![bin(frame)]
                },
            },
            expect: |_| protocol_error("2 bytes after the end of the message"),
        },
        Case {
            name: "message without a type",
            input: Input::Frames {
                join: true,
                frames: |c| vec![bin(c.sync_with("sync", &[("type", None)]))],
            },
            expect: |_| protocol_error("field `type` is missing"),
        },
        Case {
            name: "sync without data",
            input: Input::Frames {
                join: true,
                frames: |c| vec![bin(c.sync_with("sync", &[("data", None)]))],
            },
            expect: |_| protocol_error("field `data` is missing"),
        },
        Case {
            name: "sync with data as text",
            input: Input::Frames {
                join: true,
                frames: |c| vec![bin(c.sync_with("sync", &[("data", Some(text("AAAA")))]))],
            },
            expect: |_| protocol_error("field `data` should be a byte string"),
        },
        Case {
            name: "malformed documentId",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(c.sync_with(
                        "request",
                        &[("documentId", Some(text("not-a-document")))],
                    ))]
                },
            },
            expect: |_| protocol_error("bad documentId"),
        },
        Case {
            name: "negative ephemeral count",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(map(vec![
                        ("type", text("ephemeral")),
                        ("senderId", text(BAD_PEER)),
                        ("targetId", text(&c.relay_peer)),
                        ("count", ciborium::Value::Float(-1.0)),
                        ("sessionId", text("s")),
                        ("documentId", text(&c.ours.to_string())),
                        ("data", ciborium::Value::Bytes(vec![0xa0])),
                    ]))]
                },
            },
            expect: |_| protocol_error("field `count` is not a non-negative integer"),
        },
        Case {
            name: "oversized frame",
            input: Input::Frames {
                join: true,
                frames: |_| vec![bin(vec![0x40; MAX_FRAME + 1])],
            },
            expect: |_| {
                answers(
                    &[],
                    End::Closed(
                        1009,
                        format!("message too large: the limit is {MAX_FRAME} bytes"),
                    ),
                )
            },
        },
        Case {
            name: "a flood of messages over the rate limit",
            input: Input::Frames {
                join: true,
                // The default allows bursts of 2,000 messages, then 200 per second.
                frames: |_| {
                    let one = map(vec![("type", text("telepathy"))]);
                    vec![bin(one); 3000]
                },
            },
            expect: |_| {
                answers(
                    &[Answer::Error(
                        "rate_limited: more than 200 messages per second; reconnect later".into(),
                    )],
                    End::Closed(1008, "rate limited".into()),
                )
            },
        },
        // --- Well-formed messages the relay must not act on ---
        Case {
            name: "unknown message type",
            input: Input::Frames {
                join: true,
                frames: |_| {
                    vec![bin(map(vec![
                        ("type", text("telepathy")),
                        ("senderId", text(BAD_PEER)),
                    ]))]
                },
            },
            expect: |_| answers(&[], End::Open),
        },
        Case {
            name: "forged senderId",
            input: Input::Frames {
                join: true,
                frames: |c| vec![bin(c.sync_as("request", HONEST_PEER, c.ours, empty_sync()))],
            },
            // Answered to the connection's own peer: a forged sender cannot redirect the relay.
            expect: |c| answers(&[Answer::Sync(c.ours, BAD_PEER.into())], End::Open),
        },
        Case {
            name: "sync for an unknown document",
            input: Input::Frames {
                join: true,
                frames: |_| {
                    let doc = DocumentId::from_bytes([0x11; 16]);
                    vec![bin(Ctx::bare_sync("sync", doc, empty_sync()))]
                },
            },
            expect: |_| {
                answers(
                    &[Answer::Unavailable(DocumentId::from_bytes([0x11; 16]))],
                    End::Open,
                )
            },
        },
        Case {
            name: "request for an unknown document",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(c.sync(
                        "request",
                        DocumentId::from_bytes([0x12; 16]),
                        empty_sync(),
                    ))]
                },
            },
            expect: |_| {
                answers(
                    &[Answer::Unavailable(DocumentId::from_bytes([0x12; 16]))],
                    End::Open,
                )
            },
        },
        Case {
            name: "request for another coalition's manifest",
            input: Input::Frames {
                join: true,
                frames: |c| vec![bin(c.sync("request", c.foreign, empty_sync()))],
            },
            expect: |c| answers(&[Answer::Unavailable(c.foreign)], End::Open),
        },
        Case {
            name: "sync with the heads of another coalition's document",
            input: Input::Frames {
                join: true,
                frames: |c| vec![bin(c.sync("sync", c.foreign, c.foreign_heads.clone()))],
            },
            expect: |c| answers(&[Answer::Unavailable(c.foreign)], End::Open),
        },
        Case {
            name: "changes to another coalition's document",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(c.sync(
                        "sync",
                        c.foreign_comments,
                        c.foreign_change.clone(),
                    ))]
                },
            },
            expect: |c| answers(&[Answer::Unavailable(c.foreign_comments)], End::Open),
        },
        Case {
            name: "a new coalition pushed by a device",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(c.sync(
                        "sync",
                        c.new_manifest.0,
                        c.new_manifest.1.clone(),
                    ))]
                },
            },
            expect: |c| {
                let doc = c.new_manifest.0;
                answers(&[Answer::Unavailable(doc)], End::Open)
            },
        },
        Case {
            name: "a new document naming another coalition",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(c.sync(
                        "sync",
                        c.new_foreign_doc.0,
                        c.new_foreign_doc.1.clone(),
                    ))]
                },
            },
            // Refused as a document, with nothing kept: a device cannot fill the quarantine
            // of a coalition it is not in.
            expect: |c| {
                let doc = c.new_foreign_doc.0;
                answers(&[Answer::Unavailable(doc)], End::Open)
            },
        },
        Case {
            name: "sync data that is not an automerge sync message",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(c.sync(
                        "sync",
                        c.ours_plan,
                        vec![0x42, 0x00, 0xff, 0x13],
                    ))]
                },
            },
            expect: |_| answers(&[], End::Open),
        },
        Case {
            name: "ephemeral about another coalition's document",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(map(vec![
                        ("type", text("ephemeral")),
                        ("senderId", text(BAD_PEER)),
                        ("targetId", text(&c.relay_peer)),
                        ("count", ciborium::Value::Integer(1.into())),
                        ("sessionId", text("s")),
                        ("documentId", text(&c.foreign.to_string())),
                        ("data", ciborium::Value::Bytes(vec![0xa0])),
                    ]))]
                },
            },
            expect: |_| answers(&[], End::Open),
        },
        Case {
            name: "doc-unavailable the relay never asked for",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(map(vec![
                        ("type", text("doc-unavailable")),
                        ("senderId", text(BAD_PEER)),
                        ("targetId", text(&c.relay_peer)),
                        ("documentId", text(&c.foreign.to_string())),
                    ]))]
                },
            },
            expect: |_| answers(&[], End::Open),
        },
        Case {
            name: "a second peer message after the handshake",
            input: Input::Frames {
                join: true,
                frames: |c| {
                    vec![bin(map(vec![
                        ("type", text("peer")),
                        ("senderId", text(BAD_PEER)),
                        ("targetId", text(&c.relay_peer)),
                        ("selectedProtocolVersion", text("1")),
                    ]))]
                },
            },
            expect: |_| answers(&[], End::Open),
        },
        Case {
            name: "leave",
            input: Input::Frames {
                join: true,
                frames: |_| {
                    vec![bin(map(vec![
                        ("type", text("leave")),
                        ("senderId", text(BAD_PEER)),
                    ]))]
                },
            },
            expect: |_| answers(&[], closed(1000, "peer left")),
        },
        Case {
            name: "error from the peer",
            input: Input::Frames {
                join: true,
                frames: |_| {
                    vec![bin(map(vec![
                        ("type", text("error")),
                        ("message", text("I give up")),
                        ("senderId", text(BAD_PEER)),
                    ]))]
                },
            },
            expect: |_| answers(&[], closed(1000, "peer reported an error")),
        },
    ]
}

impl Ctx {
    /// A `sync`/`request` frame that does not depend on the relay's peer id.
    fn bare_sync(kind: &str, doc: DocumentId, data: Vec<u8>) -> Vec<u8> {
        map(vec![
            ("type", text(kind)),
            ("senderId", text(BAD_PEER)),
            ("targetId", text("relay")),
            ("documentId", text(&doc.to_string())),
            ("data", ciborium::Value::Bytes(data)),
        ])
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Ctx {
    /// Upgrade `/sync` with a credential: the socket, or the HTTP status and error code.
    fn connect(&self, credential: Option<&str>) -> Result<Socket, (u16, String)> {
        let url = self.relay.sync_url();
        let credential = credential.map(str::to_string);
        self.rt.block_on(async move {
            let mut request = url.into_client_request().expect("request");
            if let Some(c) = credential {
                request.headers_mut().insert(
                    "Authorization",
                    format!("Bearer {c}").parse().expect("header"),
                );
            }
            let connected =
                tokio::time::timeout(ROW_TIMEOUT, tokio_tungstenite::connect_async(request))
                    .await
                    .expect("connecting timed out");
            match connected {
                Ok((ws, _)) => Ok(ws),
                Err(WsError::Http(response)) => {
                    let body = response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    Err((response.status().as_u16(), error_code(&body)))
                }
                Err(e) => panic!("WebSocket connect failed: {e}"),
            }
        })
    }

    fn send(&self, ws: &mut Socket, frames: Vec<WsMessage>) {
        self.rt.block_on(async {
            for frame in frames {
                // The relay may close while we still send (an oversized frame): what it
                // answered is read next, so a failed send is not the row's outcome.
                if ws.send(frame).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Read answers until `done` holds for one (not kept), the relay closes, or the
    /// connection breaks.
    fn read(&self, ws: &mut Socket, done: impl Fn(&Message) -> bool) -> (Vec<Answer>, End) {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let end = tokio::time::Instant::now() + ROW_TIMEOUT;
            loop {
                let next = tokio::time::timeout_at(end, ws.next())
                    .await
                    .expect("the relay neither answered nor closed in time");
                match next {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        let message = Message::decode(&bytes).expect("the relay's frames decode");
                        if done(&message) {
                            return (out, End::Open);
                        }
                        out.push(answer(&message));
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return (out, End::Closed(code, reason));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return (out, End::Dropped),
                }
            }
        })
    }

    /// Join as `peer` and check the relay's `peer` answer.
    fn handshake(&self, ws: &mut Socket, peer: &str) -> String {
        self.send(ws, vec![bin(join_frame(peer, &["1"]))]);
        let relay = std::cell::RefCell::new(None);
        let (before, end) = self.read(ws, |m| match m {
            Message::Peer(p) if p.target_id.as_str() == peer => {
                *relay.borrow_mut() = Some(p.sender_id.to_string());
                true
            }
            _ => false,
        });
        assert!(
            before.is_empty() && end == End::Open,
            "the handshake failed: {before:?} {end:?}"
        );
        relay.into_inner().expect("the relay's peer id")
    }

    /// The probe: a request for a document nobody has; its `doc-unavailable` ends a row.
    fn probe(&self, ws: &mut Socket) -> (Vec<Answer>, End) {
        self.send(
            ws,
            vec![bin(Ctx::bare_sync("request", PROBE_DOC, empty_sync()))],
        );
        self.read(
            ws,
            |m| matches!(m, Message::DocUnavailable(d) if d.document_id == PROBE_DOC),
        )
    }

    fn close(&self, mut ws: Socket) {
        self.rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        });
    }

    fn play(&mut self, input: &Input) -> Outcome {
        match input {
            Input::Credential(credential) => match self.connect(credential(self).as_deref()) {
                Err((status, code)) => Outcome::Http(status, code),
                Ok(mut ws) => {
                    self.handshake(&mut ws, BAD_PEER);
                    let (list, end) = self.probe(&mut ws);
                    self.close(ws);
                    Outcome::Answered(list, end)
                }
            },
            Input::Invite(invite) => {
                let (status, body) = post_enroll(&self.relay.url(), &invite(self));
                if status == 200 {
                    Outcome::Http(200, String::new())
                } else {
                    Outcome::Http(status, error_code(&body))
                }
            }
            Input::Frames { join, frames } => {
                let mut ws = self
                    .connect(Some(&self.cred))
                    .expect("the coordinator connects");
                if *join {
                    self.handshake(&mut ws, BAD_PEER);
                }
                self.send(&mut ws, frames(self));
                let (mut list, end) = self.probe(&mut ws);
                if let End::Closed(..) | End::Dropped = end {
                    // Nothing more comes: drop what arrived for the probe itself.
                    list.retain(|a| *a != Answer::Unavailable(PROBE_DOC));
                }
                self.close(ws);
                Outcome::Answered(list, end)
            }
            Input::Script(script) => script(self),
        }
    }

    /// Whether an honest peer still gets the coalition: join, request the manifest, receive a
    /// `sync` of it with heads.
    fn serves_honest_peer(&self) -> Result<(), String> {
        let mut ws = self
            .connect(Some(&self.cred))
            .map_err(|e| format!("refused: {e:?}"))?;
        self.handshake(&mut ws, HONEST_PEER);
        self.send(
            &mut ws,
            vec![bin(self.sync_as(
                "request",
                HONEST_PEER,
                self.ours,
                empty_sync(),
            ))],
        );
        let ours = self.ours;
        let (before, end) = self.read(&mut ws, |m| {
            matches!(m, Message::Sync(s) if s.document_id == ours
                && automerge::sync::Message::decode(&s.data).is_ok_and(|d| !d.heads.is_empty()))
        });
        self.close(ws);
        if end == End::Open && before.is_empty() {
            Ok(())
        } else {
            Err(format!("answered {before:?}, {end:?}"))
        }
    }
}

fn answer(message: &Message) -> Answer {
    match message {
        Message::Peer(p) => Answer::Peer(p.target_id.to_string()),
        Message::Error(e) => Answer::Error(e.message.clone()),
        Message::DocUnavailable(d) => Answer::Unavailable(d.document_id),
        Message::Sync(s) => Answer::Sync(s.document_id, s.target_id.to_string()),
        other => Answer::Other(other.type_name()),
    }
}

/// The stable `code` of a JSON error body.
fn error_code(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the error has no message: {body}"
    );
    json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The code of an invite as `admin invite` prints it (which may append how to reach the
/// relay after the code): `inv-` and its hex digits.
fn invite_code(printed: &str) -> String {
    let hex = printed
        .strip_prefix("inv-")
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_hexdigit)
                .collect::<String>()
        })
        .unwrap_or_default();
    format!("inv-{hex}")
}

/// `POST /api/v1/enroll`: status and body.
fn post_enroll(url: &str, invite: &str) -> (u16, String) {
    let invite = invite_code(invite);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(ROW_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let actor = format!("{:032x}", rand::random::<u128>());
    let mut response = agent
        .post(&format!("{url}/api/v1/enroll"))
        .send_json(serde_json::json!({"invite": invite, "device": "bad-input", "actor": actor}))
        .unwrap_or_else(|e| panic!("POST enroll: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .expect("read the enroll answer");
    (status, body)
}

/// Enroll over HTTP; the device id and credential.
fn enroll_http(url: &str, invite: &str) -> (String, String) {
    let (status, body) = post_enroll(url, invite);
    assert_eq!(status, 200, "enrollment failed: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("enroll answer is JSON");
    (
        json["device_id"].as_str().expect("device id").to_string(),
        json["credential"].as_str().expect("credential").to_string(),
    )
}

/// A device connects and joins, then a coordinator revokes it: it gets an `error` naming the
/// revocation, and a policy close.
fn revoke_while_connected(ctx: &mut Ctx) -> Outcome {
    let (device, cred) = ctx.doomed.clone();
    let mut ws = ctx.connect(Some(&cred)).expect("the device connects");
    ctx.handshake(&mut ws, BAD_PEER);
    ctx.relay.admin(&["revoke", "--device", &device]);
    let (list, end) = ctx.read(&mut ws, |_| false);
    ctx.close(ws);
    Outcome::Answered(list, end)
}

/// What the relay stores: per coalition, its document count, stored bytes and the heads of
/// each of its documents.
type Stored = BTreeMap<String, (usize, i64, BTreeMap<String, Vec<String>>)>;

fn stored(data: &Path) -> Stored {
    let store = Store::open(data).expect("open the relay's store");
    let mut out = BTreeMap::new();
    for c in store.coalitions().expect("list coalitions") {
        let docs = store
            .load_docs(&c.id)
            .expect("load documents")
            .into_iter()
            .map(|(id, mut doc)| {
                (
                    id.to_string(),
                    doc.get_heads().iter().map(|h| h.to_string()).collect(),
                )
            })
            .collect();
        out.insert(c.id.to_string(), (c.documents, c.bytes, docs));
    }
    out
}

/// A sync message from `device` carrying the changes the `relay` copy lacks.
fn message_with_changes(device: &mut AutoCommit, relay: &AutoCommit) -> Vec<u8> {
    let mut relay = relay.clone();
    let (mut ds, mut rs) = (automerge::sync::State::new(), automerge::sync::State::new());
    for _ in 0..10 {
        if let Some(m) = device.sync().generate_sync_message(&mut ds) {
            if !m.changes.is_empty() {
                return m.encode();
            }
            relay
                .sync()
                .receive_sync_message(&mut rs, m)
                .expect("sync in memory");
        }
        if let Some(m) = relay.sync().generate_sync_message(&mut rs) {
            device
                .sync()
                .receive_sync_message(&mut ds, m)
                .expect("sync in memory");
        }
    }
    panic!("the device never sent its changes")
}

/// A new document with one change by `actor` that names its kind and coalition.
fn new_doc(actor: &str, kind: &str, coalition: &DocumentId) -> (DocumentId, Vec<u8>) {
    use automerge::transaction::Transactable;
    let actor: automerge::ActorId = actor.parse().expect("a hex actor id");
    let mut doc = AutoCommit::new().with_actor(actor);
    doc.put(automerge::ROOT, coalition_core::coalition::META_KIND, kind)
        .expect("put");
    doc.put(
        automerge::ROOT,
        coalition_core::coalition::META_COALITION,
        coalition.to_string(),
    )
    .expect("put");
    let data = message_with_changes(&mut doc, &AutoCommit::new());
    (DocumentId::new_random(), data)
}

fn setup() -> Ctx {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay-data");
    let (ours, invites) = coalition_with_invites(
        &data,
        &[
            ("amra", "MCA-BA", "coordinator"),
            ("mia", "BHMAC", "nmac"),
            ("kurt", "donor-DE", "donor"),
            ("opal", "NPA", "operator"),
        ],
    );
    let d = data.to_str().expect("utf-8 path");
    let foreign = coalition_server(&[
        "admin",
        "--data",
        d,
        "create-coalition",
        "--state",
        "XK",
        "--name",
        "Kosovo coalition",
        "--org",
        "MoD-XK",
        "--org-name",
        "Ministry of Defence",
        "--user",
        "arben",
    ]);
    let ours: DocumentId = ours.parse().expect("coalition id");
    let foreign: DocumentId = foreign.parse().expect("coalition id");
    // An invite that expired an hour ago (`admin invite` only makes future ones).
    let expired_invite = {
        let mut auth = coalition_server::auth::AuthDb::open(&data).expect("auth.db");
        let spec = coalition_server::auth::InviteSpec {
            coalition: ours,
            user: "late".into(),
            org: "MCA-BA".into(),
            role: "observer".into(),
        };
        auth.create_invite(&spec, chrono::Utc::now().timestamp() - 3600)
            .expect("create an expired invite")
            .code
    };

    // Sync messages built from what the relay stores.
    let (ours_plan, foreign_comments, foreign_heads, foreign_change) = {
        let mut store = Store::open(&data).expect("store");
        let ours_c = store.load(&ours).expect("our coalition");
        let mut theirs: Coalition = store.load(&foreign).expect("the other coalition");
        let plan = ours_c.find_doc(DocKind::Plan, None).expect("plan");
        let foreign_heads = theirs
            .manifest()
            .clone()
            .sync()
            .generate_sync_message(&mut automerge::sync::State::new())
            .expect("first message")
            .encode();
        let comments = theirs
            .find_doc(DocKind::Comments, None)
            .expect("comments")
            .id;
        let before = theirs.doc(&comments).expect("comments").doc.clone();
        let arben = Identity {
            user: "arben".into(),
            org: "MoD-XK".into(),
            device: "desk".into(),
            actor: "b2".repeat(16),
        };
        theirs
            .apply(
                &arben,
                Edit::AddComment(Comment {
                    id: "0190f0aa-0000-7000-8000-0000000000b2".into(),
                    kind: CommentKind::Comment,
                    about: None,
                    text: "not yours to send".into(),
                    org: arben.org.clone(),
                    user: arben.user.clone(),
                    at: 1_700_000_000,
                }),
                1_700_000_000,
            )
            .expect("comment");
        let mut after = theirs.doc(&comments).expect("comments").doc.clone();
        let change = message_with_changes(&mut after, &before);
        (plan.id, comments, foreign_heads, change)
    };

    let relay = RelayProcess::start(&data);
    let honest = tmp.path().join("amra");
    enroll(&honest, &relay.url(), &invites[0], "laptop");
    must_sync(&honest);
    let cred = credential_of(&honest);
    let actor = Store::open(&honest)
        .expect("the device's store")
        .identity()
        .expect("read the identity")
        .expect("an enrolled device has an identity")
        .actor;
    let used_invite = invites[1].clone();
    enroll_http(&relay.url(), &used_invite);
    let (revoked_device, revoked_cred) = enroll_http(&relay.url(), &invites[2]);
    relay.admin(&["revoke", "--device", &revoked_device]);
    let doomed = enroll_http(&relay.url(), &invites[3]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut ctx = Ctx {
        relay,
        _tmp: tmp,
        honest,
        cred,
        ours,
        ours_plan,
        foreign,
        foreign_comments,
        foreign_heads,
        foreign_change,
        // By the coordinator's own device, so that only the document itself is wrong.
        new_manifest: new_doc(&actor, "manifest", &DocumentId::new_random()),
        new_foreign_doc: new_doc(&actor, "comments", &foreign),
        relay_peer: String::new(),
        revoked_cred,
        used_invite,
        expired_invite,
        doomed,
        rt,
    };
    let mut ws = ctx.connect(Some(&ctx.cred)).expect("connect");
    ctx.relay_peer = ctx.handshake(&mut ws, HONEST_PEER);
    ctx.close(ws);
    ctx
}

#[test]
fn bad_and_forbidden_inputs_get_exact_answers_and_change_nothing() {
    let started = Instant::now();
    let mut ctx = setup();
    let table = cases();
    let mut failures = Vec::new();
    eprintln!(
        "bad_input: set up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for case in &table {
        let before = stored(&ctx.relay.data);
        let outcome = ctx.play(&case.input);
        let expected = (case.expect)(&ctx);
        if outcome != expected {
            failures.push(format!(
                "{}:\n    expected {expected:?}\n    got      {outcome:?}",
                case.name
            ));
        }
        assert!(
            ctx.relay.is_running(),
            "{}: the relay died:\n{}",
            case.name,
            ctx.relay.log_text()
        );
        if let Err(e) = ctx.serves_honest_peer() {
            failures.push(format!(
                "{}: an honest peer is no longer served: {e}",
                case.name
            ));
        }
        if stored(&ctx.relay.data) != before {
            failures.push(format!(
                "{}: the relay's stored documents changed",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    // And a real device still syncs both ways.
    let change = change_of(&coalition_json(
        &ctx.honest,
        &["comment", "--text", "still served after the bad inputs"],
    ));
    must_sync(&ctx.honest);
    let history = history_changes(&ctx.relay.api(&ctx.cred, &ctx.ours.to_string(), "history"));
    assert!(
        history.contains(&change),
        "the honest device's change did not reach the relay"
    );
    eprintln!(
        "bad_input: {} rows in {:.1} s",
        table.len(),
        started.elapsed().as_secs_f64()
    );
}
