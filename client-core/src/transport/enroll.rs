//! Enrollment: an invite from a coordinator becomes this device's credential.
//!
//! `POST {server}/api/v1/enroll` with the invite, a device name and the device's Automerge
//! actor id (so the relay can attribute every change this device makes); or, when the invite
//! carries the relay's QUIC port and pin, the same request over QUIC, so that the device's
//! first sync in this process resumes the TLS session and sends its requests as 0-RTT data,
//! one round trip sooner (see [`super::quic::enroll`]). HTTP stays the fallback: when the
//! QUIC handshake does not complete within
//! [`ENROLL_HANDSHAKE_TIMEOUT`] (UDP blocked), the
//! connection fails, or the relay does not enroll over QUIC. The answer carries
//! the credential, who the person is, and the coalitions the device may sync; all of it goes
//! into the store's settings. The actor id is kept if the store already has one: changes
//! made on this device before enrolling stay attributed to it.
//!
//! The request is one blocking call (`ureq`, rustls for `https://`; QUIC runs on a runtime
//! of its own in a thread of its own); call it from a plain thread or `spawn_blocking`, not
//! from inside an async task.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::quic::pin::{Invite, QuicEndpoint};
use super::quic::{QuicTarget, ENROLL_HANDSHAKE_TIMEOUT};
use super::{add_synced_coalitions, http_url, keys};
use crate::coalition::Identity;
use crate::ids::new_actor_id;
use crate::model::DocKind;
use crate::store::{Store, StoreError};
use crate::sync::{DocumentId, DocumentIdError};

/// How long enrollment waits for the relay, in total.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of `POST /api/v1/enroll`.
#[derive(Debug, Clone, Serialize)]
pub struct EnrollRequest<'a> {
    /// The invite code.
    pub invite: &'a str,
    /// The device's name, shown to coordinators.
    pub device: &'a str,
    /// The device's Automerge actor id, 32 hex characters.
    pub actor: &'a str,
}

/// The relay's answer to a successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Enrollment {
    /// The device credential (a secret).
    pub credential: String,
    /// The device's id at the relay.
    pub device_id: String,
    /// The person the invite was for.
    pub user: String,
    /// The person's organisation.
    pub org: String,
    /// The role the invite grants.
    #[serde(default)]
    pub role: String,
    /// The coalitions (manifest document ids) the device may sync.
    #[serde(default)]
    pub coalitions: Vec<String>,
    /// The relay's peer id in the sync protocol.
    #[serde(default)]
    pub server_peer_id: String,
    /// The relay's storage id in the sync protocol (relays before it was sent: empty).
    #[serde(default)]
    pub server_storage_id: String,
    /// The documents the relay holds for those coalitions.
    #[serde(default)]
    pub documents: Vec<KnownDocument>,
}

/// A document the relay holds for a coalition, as enrollment lists it: a new device asks for
/// all of them in its first flight, instead of learning them from the manifest a round trip
/// later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownDocument {
    /// The document id.
    pub id: String,
    /// Its coalition (manifest id).
    pub coalition: String,
    /// What it holds.
    pub kind: DocKind,
    /// Its owner organisation, if any.
    #[serde(default)]
    pub owner: Option<String>,
}

/// What [`enroll`] set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrolled {
    /// The relay's base URL.
    pub server: String,
    /// The identity now stored.
    pub identity: Identity,
    /// The device's id at the relay.
    pub device_id: String,
    /// The role granted.
    pub role: String,
    /// The coalitions to sync.
    pub coalitions: Vec<DocumentId>,
}

/// Why enrollment failed. Nothing is written to the store unless it succeeded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The invite is not `inv-CODE` or `inv-CODE.PORT.PIN`.
    #[error(transparent)]
    BadInvite(#[from] crate::transport::quic::pin::PinError),
    /// The server URL is not an http(s) or ws(s) URL.
    #[error("`{0}` is not a relay URL (expected http://, https://, ws:// or wss://)")]
    InvalidServerUrl(String),
    /// The relay could not be reached (refused, unknown host, timeout, TLS failure).
    #[error("cannot reach the relay at {url}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The relay refused the enrollment and said why (`invalid_invite`, `invite_used`,
    /// `invite_expired`...).
    #[error("the relay refused the enrollment: {message} ({code})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The relay's stable error code.
        code: String,
        /// The relay's message.
        message: String,
    },
    /// The relay answered something that is not an enrollment.
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    BadResponse {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// A coalition id in the answer is not a document id.
    #[error("the relay listed `{id}`, which is not a coalition id")]
    InvalidCoalitionId {
        /// The id as sent.
        id: String,
        /// Why it does not parse.
        #[source]
        source: DocumentIdError,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The JSON error body of the relay's API.
#[derive(Debug, Deserialize)]
pub(crate) struct ApiErrorBody {
    pub(crate) error: ApiError,
}

/// One API error: a stable code and a message for people.
#[derive(Debug, Deserialize)]
pub(crate) struct ApiError {
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

/// Sends the enrollment request and returns the relay's answer. Writes nothing.
pub fn post_enroll(server: &str, request: &EnrollRequest<'_>) -> Result<Enrollment, EnrollError> {
    let url = http_url(server, "/api/v1/enroll")
        .ok_or_else(|| EnrollError::InvalidServerUrl(server.to_owned()))?;
    // Statuses are read, not turned into errors: the relay's JSON error body is what tells
    // the user whether the invite was wrong, used or expired.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(ENROLL_TIMEOUT))
        .build()
        .into();
    let mut response =
        agent
            .post(&url)
            .send_json(request)
            .map_err(|source| EnrollError::Unreachable {
                url: url.clone(),
                source: Box::new(source),
            })?;
    let status = response.status().as_u16();
    // An enrollment answer is a few hundred bytes; the cap keeps a wrong server from
    // streaming us something large.
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|source| EnrollError::Unreachable {
            url: url.clone(),
            source: Box::new(source),
        })?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&body).map_err(|e| EnrollError::BadResponse {
            url,
            status,
            detail: e.to_string(),
        });
    }
    match serde_json::from_str::<ApiErrorBody>(&body) {
        Ok(ApiErrorBody { error }) => Err(EnrollError::Refused {
            status,
            code: error.code,
            message: error.message,
        }),
        Err(_) => Err(EnrollError::BadResponse {
            url,
            status,
            detail: snippet(&body),
        }),
    }
}

/// Enrolls over the relay's QUIC endpoint, or over HTTP when QUIC cannot carry the request.
/// Writes nothing.
fn enroll_preferring_quic(
    server: &str,
    quic: &QuicEndpoint,
    request: &EnrollRequest<'_>,
) -> Result<Enrollment, EnrollError> {
    let host =
        super::host_of(server).ok_or_else(|| EnrollError::InvalidServerUrl(server.to_owned()))?;
    let url = format!("quic://{host}:{}", quic.port);
    let target = QuicTarget {
        host,
        endpoint: *quic,
        congestion: Default::default(),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "enroll": request }))
        .expect("an enrollment request of strings always serializes to JSON");
    let fallback = |why: &dyn std::fmt::Display| {
        tracing::info!(reason = %why, "enrolling over HTTP instead of QUIC");
        post_enroll(server, request)
    };
    let answer = match on_own_runtime(|| {
        super::quic::enroll(&target, &body, ENROLL_HANDSHAKE_TIMEOUT, ENROLL_TIMEOUT)
    }) {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return fallback(&super::session::error_chain(&e)),
        Err(e) => return fallback(&e),
    };
    let text = String::from_utf8_lossy(&answer);
    match read_answer(&url, &text) {
        // A relay that does not enroll over QUIC took the request for a credential.
        Err(EnrollError::Refused { code, .. }) if code == "unauthorized" => {
            fallback(&"the relay does not enroll over QUIC")
        }
        other => other,
    }
}

/// The relay's answer over QUIC: the body `POST /api/v1/enroll` would return, or its error
/// with `"status"`.
fn read_answer(url: &str, text: &str) -> Result<Enrollment, EnrollError> {
    #[derive(Deserialize)]
    struct Failed {
        status: u16,
        error: ApiError,
    }
    if let Ok(Failed { status, error }) = serde_json::from_str::<Failed>(text) {
        return Err(EnrollError::Refused {
            status,
            code: error.code,
            message: error.message,
        });
    }
    serde_json::from_str(text).map_err(|e| EnrollError::BadResponse {
        url: url.to_owned(),
        status: 200,
        detail: format!("{e}: {}", snippet(text)),
    })
}

/// Runs `make()`'s future to its end on a current-thread runtime in a thread of its own, so
/// that the caller may be a plain thread or a `spawn_blocking` one.
fn on_own_runtime<F, M>(make: M) -> std::io::Result<F::Output>
where
    M: FnOnce() -> F + Send,
    F: std::future::Future,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(make()))
        });
        match thread.join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The start of a body, for an error message.
pub(crate) fn snippet(body: &str) -> String {
    let text: String = body.chars().take(200).collect();
    if text.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

/// Enrolls this device with an invite: keeps (or creates) the device's actor id, asks the
/// relay, then stores the identity, the relay URL, the credential and the coalitions to sync.
///
/// `device` names the device; without it the stored identity's device name is kept, or
/// `HOSTNAME` is used.
pub fn enroll(
    store: &Store,
    server: &str,
    invite: &str,
    device: Option<&str>,
) -> Result<Enrolled, EnrollError> {
    let server = super::base_url(server)
        .ok_or_else(|| EnrollError::InvalidServerUrl(server.to_owned()))?
        .to_owned();
    let existing = store.identity()?;
    let actor = match &existing {
        // Keep the actor: changes already made on this device stay attributed to it.
        Some(identity) => identity.actor.clone(),
        None => new_actor_id().to_hex_string(),
    };
    // The relay checks the code; the QUIC port and pin after it are for this device.
    let invite = Invite::parse(invite)?;
    let device = device
        .map(str::to_owned)
        .or_else(|| existing.as_ref().map(|i| i.device.clone()))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "coalition-device".to_owned());
    let request = EnrollRequest {
        invite: &invite.code,
        device: &device,
        actor: &actor,
    };
    let answer = match &invite.quic {
        Some(quic) => enroll_preferring_quic(&server, quic, &request)?,
        None => post_enroll(&server, &request)?,
    };
    let coalitions = answer
        .coalitions
        .iter()
        .map(|id| {
            DocumentId::parse_id_or_url(id).map_err(|source| EnrollError::InvalidCoalitionId {
                id: id.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity {
        user: answer.user,
        org: answer.org,
        device,
        actor,
    };
    store.set_identity(&identity)?;
    store.set_meta(keys::SERVER, &server)?;
    store.set_meta(keys::CREDENTIAL, &answer.credential)?;
    store.set_meta(keys::DEVICE_ID, &answer.device_id)?;
    store.set_meta(keys::ROLE, &answer.role)?;
    store.set_meta(keys::SERVER_PEER_ID, &answer.server_peer_id)?;
    store.set_meta(keys::SERVER_STORAGE_ID, &answer.server_storage_id)?;
    let known = serde_json::to_string(&answer.documents)
        .expect("strings and a unit enum always serialize to JSON");
    store.set_meta(keys::KNOWN_DOCUMENTS, &known)?;
    super::set_quic_endpoint(store, invite.quic.as_ref())?;
    add_synced_coalitions(store, &coalitions)?;
    Ok(Enrolled {
        server,
        identity,
        device_id: answer.device_id,
        role: answer.role,
        coalitions,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;

    /// Answers one HTTP request on 127.0.0.1 with `status` and `body`; returns the server URL
    /// and a handle yielding the request the relay received.
    fn one_shot(status: &str, body: &str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let handle = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().expect("accept");
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers, then the body by content-length.
            loop {
                let n = tcp.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            tcp.write_all(response.as_bytes()).expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        (format!("http://{addr}"), handle)
    }

    #[test]
    fn enrollment_stores_the_credential_and_keeps_the_actor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let before = Identity {
            user: "old".into(),
            org: "old-org".into(),
            device: "tablet-7".into(),
            actor: "00112233445566778899aabbccddeeff".into(),
        };
        store.set_identity(&before).expect("identity");
        let coalition = DocumentId::new_random();
        let body = serde_json::json!({
            "credential": "s3cret", "device_id": "dev-1", "user": "Amra", "org": "BHMAC",
            "role": "nmac", "coalitions": [coalition.to_string()], "server_peer_id": "relay-1",
        })
        .to_string();
        let (server, seen) = one_shot("200 OK", &body);

        let enrolled = enroll(&store, &server, "INV-1", None).expect("enroll");
        let request = seen.join().expect("server thread");
        assert!(request.starts_with("POST /api/v1/enroll "), "{request}");
        let sent: serde_json::Value = request
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .expect("a JSON body");
        assert_eq!(sent["actor"], "00112233445566778899aabbccddeeff");
        assert_eq!(sent["device"], "tablet-7");
        assert_eq!(sent["invite"], "INV-1");
        assert_eq!(enrolled.coalitions, vec![coalition]);
        let identity = store.identity().expect("read").expect("identity");
        assert_eq!(identity.actor, before.actor, "the actor is kept");
        assert_eq!(
            (identity.user.as_str(), identity.org.as_str()),
            ("Amra", "BHMAC")
        );
        assert_eq!(
            store.meta(keys::CREDENTIAL).expect("meta").as_deref(),
            Some("s3cret")
        );
        assert_eq!(store.meta(keys::SERVER).expect("meta"), Some(server));
        assert_eq!(
            super::super::synced_coalitions(&store).expect("list"),
            vec![coalition]
        );
    }

    #[test]
    fn a_quic_answer_is_an_enrollment_or_the_relay_reason() {
        let url = "quic://127.0.0.1:8443";
        let ok = r#"{"credential":"s3cret","device_id":"dev-1","user":"Amra","org":"BHMAC"}"#;
        let answer = read_answer(url, ok).expect("an enrollment");
        assert_eq!(answer.credential, "s3cret");
        let refused = r#"{"status":409,"error":{"code":"invite_used","message":"already used"}}"#;
        match read_answer(url, refused) {
            Err(EnrollError::Refused { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (409, "invite_used"));
            }
            other => panic!("unexpected: {other:?}"),
        }
        assert!(matches!(
            read_answer(url, "{\"ok\":true}"),
            Err(EnrollError::BadResponse { .. })
        ));
    }

    #[test]
    fn a_used_invite_shows_the_relay_message_and_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let body = r#"{"error":{"code":"invite_used","message":"this invite was already used"}}"#;
        let (server, seen) = one_shot("400 Bad Request", body);
        let err = enroll(&store, &server, "INV-1", Some("laptop")).expect_err("refused");
        seen.join().expect("server thread");
        match &err {
            EnrollError::Refused { status, code, .. } => {
                assert_eq!((*status, code.as_str()), (400, "invite_used"));
            }
            other => panic!("unexpected: {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "the relay refused the enrollment: this invite was already used (invite_used)"
        );
        assert!(store.identity().expect("read").is_none());
        assert!(store.meta(keys::CREDENTIAL).expect("meta").is_none());
    }
}
