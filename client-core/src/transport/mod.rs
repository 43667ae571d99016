//! Moving documents between this device and the relay.
//!
//! The sync protocol itself is the sans-IO [`SyncEngine`](crate::sync::SyncEngine); this
//! module is the device's side of the wire around it:
//!
//! - [`enroll`](mod@enroll): turn an invite into a device credential (`POST /api/v1/enroll`) and remember
//!   the relay, the credential and the coalitions to sync in the store's settings;
//! - [`session`]: [`Session`], the engine tied to the local [`Store`]: which documents to
//!   share, saving every received change durably before anything acknowledges it, the per-peer
//!   sync states, and the heads last known to be on the relay. It does no network I/O, so it
//!   is tested against an in-memory relay;
//! - [`watcher`]: notices edits that other `coalition` processes write to the same store;
//! - [`ws`]: the sync loop that drives a session, [`sync_once`] and [`watch`] (reconnects with
//!   backoff), the WebSocket transport (tokio-tungstenite, rustls for `wss://`), and the
//!   choice between it and QUIC (fallback to WebSocket and back);
//! - [`quic`]: the QUIC transport (quinn): the relay's certificate pinned by the invite, one
//!   stream per document, keep-alives, 0-RTT on reconnects, migration;
//! - `link` (one connection over either transport) and `priority` (small frames before
//!   large ones) are the loop's parts;
//! - [`status`](mod@status): what the device knows about its sync without the network: relay,
//!   identity, last sync, and per document the changes not yet known to be on the relay, when
//!   it was last in sync and the last error that left it behind.
//!
//! Nothing here deletes local data: a refused credential, a dropped link or a document the
//! relay will not give leaves every stored document as it was.

pub mod enroll;
mod link;
mod priority;
pub mod quic;
pub mod session;
pub mod status;
pub mod watcher;
pub mod ws;

#[cfg(test)]
mod test_relay;

pub use enroll::{enroll, EnrollError, Enrolled, Enrollment};
pub use link::TransportKind;
pub use quic::pin::{Invite, QuicEndpoint, SpkiPin};
pub use quic::wire::Congestion;
pub use session::{Session, SessionError, SessionEvent, SyncStats};
pub use status::{status, DeviceStatus};
pub use ws::{
    sync_once, sync_once_over, watch, ConnectError, SyncError, SyncOptions, SyncSummary, Transport,
    WatchEvent,
};

use crate::store::{Store, StoreError};
use crate::sync::DocumentId;

/// Keys of the device settings ([`Store::meta`]) this module reads and writes.
pub mod keys {
    /// The relay's base URL, e.g. `https://relay.example.org`.
    pub const SERVER: &str = "server";
    /// The device credential, sent as `Authorization: Bearer`.
    pub const CREDENTIAL: &str = "credential";
    /// The device id the relay gave at enrollment.
    pub const DEVICE_ID: &str = "device_id";
    /// The role the invite granted.
    pub const ROLE: &str = "role";
    /// The relay's peer id, as enrollment or the last handshake reported it.
    pub const SERVER_PEER_ID: &str = "server_peer_id";
    /// The relay's storage id, as enrollment or the last handshake reported it: the device
    /// keeps its sync states with the relay under it.
    pub const SERVER_STORAGE_ID: &str = "server_storage_id";
    /// JSON array of the coalition ids (manifest documents) this device syncs.
    pub const COALITIONS: &str = "sync_coalitions";
    /// This store's storage id in the sync protocol: the relay keeps its sync state with us
    /// under it, so it must stay the same for the life of the store.
    pub const STORAGE_ID: &str = "sync_storage_id";
    /// RFC 3339 time of the last sync that reached a quiet state.
    pub const LAST_SYNC: &str = "sync_last_success";
    /// The last sync error, as shown to the user, with its time.
    pub const LAST_ERROR: &str = "sync_last_error";
    /// Prefix of `synced_heads:<doc>`: the document's heads when they were last known to be
    /// on the relay (sorted hex hashes, comma-separated).
    pub const SYNCED_HEADS_PREFIX: &str = "synced_heads:";
    /// `0` when the relay did not list the documents the device was behind on when asked
    /// (`1` when it did): only then does a sync offer the documents in step with it too.
    pub const SERVER_LISTS_BEHIND: &str = "server_lists_behind";
    /// JSON array of the documents the relay held for this device's coalitions at enrollment
    /// ([`super::enroll::KnownDocument`]), asked for in the first sync's first flight.
    pub const KNOWN_DOCUMENTS: &str = "known_documents";
    /// The relay's QUIC UDP port, from the invite.
    pub const QUIC_PORT: &str = "quic_port";
    /// The pin of the relay's QUIC certificate key, from the invite.
    pub const QUIC_PIN: &str = "quic_pin";
    /// JSON map of document id to its last sync and last error (see [`mod@super::status`]).
    pub const DOC_SYNC: &str = "sync_documents";
}

/// The relay's QUIC endpoint as enrollment recorded it; `None` when the invite had no pin.
/// A damaged setting is reported, not ignored: the device would silently stop using QUIC.
pub fn quic_endpoint(store: &Store) -> Result<Option<QuicEndpoint>, StoreError> {
    let port = store.meta(keys::QUIC_PORT)?.filter(|p| !p.is_empty());
    let pin = store.meta(keys::QUIC_PIN)?.filter(|p| !p.is_empty());
    let (Some(port), Some(pin)) = (port, pin) else {
        return Ok(None);
    };
    match (port.parse::<u16>(), SpkiPin::parse(&pin)) {
        (Ok(port), Ok(pin)) => Ok(Some(QuicEndpoint { port, pin })),
        _ => {
            tracing::warn!(%port, %pin, "the stored QUIC endpoint is unreadable; syncing over WebSocket");
            Ok(None)
        }
    }
}

/// Records the relay's QUIC endpoint (or forgets it, for an invite without one).
pub fn set_quic_endpoint(store: &Store, quic: Option<&QuicEndpoint>) -> Result<(), StoreError> {
    match quic {
        Some(q) => {
            store.set_meta(keys::QUIC_PORT, &q.port.to_string())?;
            store.set_meta(keys::QUIC_PIN, &q.pin.to_string())
        }
        None => {
            store.set_meta(keys::QUIC_PORT, "")?;
            store.set_meta(keys::QUIC_PIN, "")
        }
    }
}

/// The host of the relay's URL (without port or brackets kept for IPv6).
pub(crate) fn host_of(server: &str) -> Option<String> {
    let base = base_url(server)?;
    let (_, rest) = base.split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The coalitions this device syncs, as enrollment (or `sync --coalition`) recorded them.
/// Unreadable entries are skipped: the list is ours, a damaged one must not stop a sync.
pub fn synced_coalitions(store: &Store) -> Result<Vec<DocumentId>, StoreError> {
    let Some(json) = store.meta(keys::COALITIONS)? else {
        return Ok(Vec::new());
    };
    let ids: Vec<String> = serde_json::from_str(&json).unwrap_or_default();
    let mut out: Vec<DocumentId> = ids
        .iter()
        .filter_map(|s| DocumentId::parse_id_or_url(s).ok())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Adds coalitions to the list this device syncs (keeping the ones already there).
pub fn add_synced_coalitions(store: &Store, ids: &[DocumentId]) -> Result<(), StoreError> {
    let mut all = synced_coalitions(store)?;
    all.extend_from_slice(ids);
    all.sort();
    all.dedup();
    let text: Vec<String> = all.iter().map(ToString::to_string).collect();
    store.set_meta(keys::COALITIONS, &serde_json::to_string(&text)?)
}

/// This store's sync-protocol storage id, created on first use.
pub fn storage_id(store: &Store) -> Result<String, StoreError> {
    if let Some(id) = store.meta(keys::STORAGE_ID)? {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    store.set_meta(keys::STORAGE_ID, &id)?;
    Ok(id)
}

/// Records a failed sync for `coalition status`. Only a setting is written; documents are not
/// touched.
pub fn record_failure(store: &Store, message: &str) -> Result<(), StoreError> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    store.set_meta(keys::LAST_ERROR, &format!("{now} {message}"))
}

/// Heads as they are kept in `synced_heads:<doc>`: sorted hex, comma-separated.
pub(crate) fn heads_text(heads: &[automerge::ChangeHash]) -> String {
    let mut hex: Vec<String> = heads.iter().map(ToString::to_string).collect();
    hex.sort();
    hex.join(",")
}

/// The relay's base URL without a trailing slash, checked to be http(s) or ws(s).
pub(crate) fn base_url(server: &str) -> Option<&str> {
    let base = server.trim().trim_end_matches('/');
    let scheme_ok = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .any(|s| base.len() > s.len() && base[..s.len()].eq_ignore_ascii_case(s));
    scheme_ok.then_some(base)
}

/// `{server}/sync` with the WebSocket scheme that matches the server's.
pub(crate) fn sync_url(server: &str) -> Option<String> {
    let base = base_url(server)?;
    let (scheme, rest) = base.split_once("://")?;
    let ws = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "wss",
        _ => "ws",
    };
    Some(format!("{ws}://{rest}/sync"))
}

/// `{server}{path}` over http(s), for the REST API.
pub(crate) fn http_url(server: &str, path: &str) -> Option<String> {
    let base = base_url(server)?;
    let (scheme, rest) = base.split_once("://")?;
    let http = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "https",
        _ => "http",
    };
    Some(format!("{http}://{rest}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_server_scheme() {
        assert_eq!(
            sync_url("http://127.0.0.1:8080/").as_deref(),
            Some("ws://127.0.0.1:8080/sync")
        );
        assert_eq!(
            sync_url("https://relay.example.org").as_deref(),
            Some("wss://relay.example.org/sync")
        );
        assert_eq!(
            http_url("wss://relay.example.org", "/api/v1/enroll").as_deref(),
            Some("https://relay.example.org/api/v1/enroll")
        );
        assert_eq!(sync_url("relay.example.org"), None);
        assert_eq!(
            host_of("http://127.0.0.1:8080/").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            host_of("https://relay.example.org").as_deref(),
            Some("relay.example.org")
        );
        assert_eq!(host_of("http://[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(sync_url("ftp://x"), None);
    }

    #[test]
    fn synced_coalitions_accumulate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let a = DocumentId::new_random();
        let b = DocumentId::new_random();
        add_synced_coalitions(&store, &[a]).expect("add");
        add_synced_coalitions(&store, &[b, a]).expect("add");
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(synced_coalitions(&store).expect("read"), want);
        let id = storage_id(&store).expect("id");
        assert_eq!(storage_id(&store).expect("id"), id);
    }
}
