//! What the device knows about its sync, without the network: `coalition status`.
//!
//! A document has unsent changes when its local heads differ from the heads recorded when it
//! was last known to be on the relay (`synced_heads:<doc>`, written by
//! [`Session::checkpoint`](super::Session::checkpoint)). Heads that differ because the relay
//! has more than we do are not "unsent"; we cannot tell offline, so status says "not known to
//! be on the relay", which is the question a field user asks before going offline again.

use serde::Serialize;

use super::{heads_text, keys, synced_coalitions};
use crate::coalition::{describe, Identity};
use crate::store::{Store, StoreError};
use crate::sync::DocumentId;

/// The device's sync status.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    /// The relay's URL, once enrolled.
    pub server: Option<String>,
    /// Whether a credential is stored.
    pub enrolled: bool,
    /// The device's id at the relay.
    pub device_id: Option<String>,
    /// The role the invite granted.
    pub role: Option<String>,
    /// Who uses this device.
    pub identity: Option<Identity>,
    /// When a sync last completed (RFC 3339).
    pub last_sync: Option<String>,
    /// The last sync error, with its time.
    pub last_error: Option<String>,
    /// Per coalition on the device or to sync.
    pub coalitions: Vec<CoalitionStatus>,
    /// Documents, over all coalitions, with changes not known to be on the relay.
    pub unsent_documents: usize,
}

/// One coalition's sync status.
#[derive(Debug, Clone, Serialize)]
pub struct CoalitionStatus {
    /// The coalition (manifest id).
    pub id: DocumentId,
    /// Whether the device syncs it (enrolled for it).
    pub synced: bool,
    /// Documents on the device.
    pub documents: usize,
    /// Documents whose changes are not known to be on the relay.
    pub unsent: Vec<UnsentDoc>,
}

/// A document with changes not known to be on the relay.
#[derive(Debug, Clone, Serialize)]
pub struct UnsentDoc {
    /// The document.
    pub id: DocumentId,
    /// Its kind, if it says.
    pub kind: Option<String>,
    /// Its owner organisation.
    pub owner: Option<String>,
    /// True when it was never synced at all.
    pub never_synced: bool,
}

/// Reads the status from the store (reads only).
pub fn status(store: &Store) -> Result<DeviceStatus, StoreError> {
    let synced = synced_coalitions(store)?;
    let mut ids: Vec<DocumentId> = store.coalitions()?.into_iter().map(|c| c.id).collect();
    ids.extend(synced.iter().copied());
    ids.sort();
    ids.dedup();
    let mut coalitions = Vec::new();
    let mut unsent_documents = 0;
    for id in ids {
        let mut docs = store.load_docs(&id)?;
        let mut unsent = Vec::new();
        for (doc_id, doc) in docs.iter_mut() {
            let heads = doc.get_heads();
            if heads.is_empty() {
                continue;
            }
            let recorded = store.meta(&format!("{}{doc_id}", keys::SYNCED_HEADS_PREFIX))?;
            if recorded.as_deref() == Some(heads_text(&heads).as_str()) {
                continue;
            }
            let described = describe(doc).ok();
            unsent.push(UnsentDoc {
                id: *doc_id,
                kind: described.as_ref().map(|(k, _, _)| k.to_string()),
                owner: described.and_then(|(_, o, _)| o),
                never_synced: recorded.is_none(),
            });
        }
        unsent_documents += unsent.len();
        coalitions.push(CoalitionStatus {
            id,
            synced: synced.contains(&id),
            documents: docs.len(),
            unsent,
        });
    }
    Ok(DeviceStatus {
        server: store.meta(keys::SERVER)?,
        enrolled: store.meta(keys::CREDENTIAL)?.is_some(),
        device_id: store.meta(keys::DEVICE_ID)?,
        role: store.meta(keys::ROLE)?.filter(|r| !r.is_empty()),
        identity: store.identity()?,
        last_sync: store.meta(keys::LAST_SYNC)?,
        last_error: store.meta(keys::LAST_ERROR)?,
        coalitions,
        unsent_documents,
    })
}
