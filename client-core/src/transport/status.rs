//! What the device knows about its sync, without the network: `coalition status`.
//!
//! A document has unsent changes when its local heads differ from the heads recorded when it
//! was last known to be on the relay (`synced_heads:<doc>`, written by
//! [`Session::checkpoint`](super::Session::checkpoint)). Heads that differ because the relay
//! has more than we do are not "unsent"; we cannot tell offline, so status says "not known to
//! be on the relay", which is the question a field user asks before going offline again.
//!
//! Per document it also shows how many changes (and bytes) wait, when the document was last
//! in sync with the relay, and the last error that left it behind (a dropped link, a budget
//! reached, a document the relay would not give). The sync loop keeps those in one setting
//! ([`keys::DOC_SYNC`], a JSON map) through `DocBook`, written from a second store handle so
//! a long `--watch` updates them at every quiet moment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::session::Session;
use super::ws::Outcome;
use super::{heads_text, keys, synced_coalitions};
use crate::coalition::{describe, Identity};
use crate::store::{HeldChange, HeldStatus, Store, StoreError};
use crate::sync::{DocumentId, Message};

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
    /// Changes of this device the relay refused: taken out of the documents and kept here,
    /// with why, until a coordinator accepts them on the relay (then they come back through
    /// sync) or for the record.
    pub refused: Vec<HeldChange>,
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
    /// Per document of the coalition on the device: when it was last in sync, the last error.
    pub documents_sync: Vec<DocSync>,
}

/// One document's sync record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DocSync {
    /// The document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<DocumentId>,
    /// When it was last in sync with the relay (RFC 3339).
    #[serde(default)]
    pub last_sync: Option<String>,
    /// The last error that left it behind, with its time; cleared by the next success.
    #[serde(default)]
    pub last_error: Option<String>,
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
    /// Changes made since it was last known to be on the relay.
    pub changes: usize,
    /// Their size in bytes (what a sync of them sends, before compression and framing).
    pub bytes: u64,
    /// When it was last in sync with the relay.
    pub last_sync: Option<String>,
    /// The last error that left it behind.
    pub last_error: Option<String>,
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
    let records = read_book(store)?;
    for id in ids {
        let mut docs = store.load_docs(&id)?;
        let mut unsent = Vec::new();
        let mut documents_sync = Vec::new();
        for (doc_id, doc) in docs.iter_mut() {
            let record = records.get(doc_id).cloned().unwrap_or_default();
            documents_sync.push(DocSync {
                id: Some(*doc_id),
                ..record.clone()
            });
            let heads = doc.get_heads();
            if heads.is_empty() {
                continue;
            }
            let recorded = store.meta(&format!("{}{doc_id}", keys::SYNCED_HEADS_PREFIX))?;
            if recorded.as_deref() == Some(heads_text(&heads).as_str()) {
                continue;
            }
            let since = recorded.as_deref().map(parse_heads).unwrap_or_default();
            let waiting = doc.get_changes(&since);
            let described = describe(doc).ok();
            unsent.push(UnsentDoc {
                id: *doc_id,
                kind: described.as_ref().map(|(k, _, _)| k.to_string()),
                owner: described.and_then(|(_, o, _)| o),
                never_synced: recorded.is_none(),
                changes: waiting.len(),
                bytes: waiting.iter().map(|c| c.raw_bytes().len() as u64).sum(),
                last_sync: record.last_sync,
                last_error: record.last_error,
            });
        }
        unsent_documents += unsent.len();
        coalitions.push(CoalitionStatus {
            id,
            synced: synced.contains(&id),
            documents: docs.len(),
            unsent,
            documents_sync,
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
        refused: store.held_changes(None, Some(HeldStatus::Held))?,
    })
}

/// Heads as `synced_heads:<doc>` keeps them; unreadable ones are skipped (the count of
/// waiting changes is then larger, never smaller).
fn parse_heads(text: &str) -> Vec<automerge::ChangeHash> {
    text.split(',')
        .filter_map(|h| h.parse::<automerge::ChangeHash>().ok())
        .collect()
}

/// The per-document records.
fn read_book(store: &Store) -> Result<BTreeMap<DocumentId, DocSync>, StoreError> {
    let Some(json) = store.meta(keys::DOC_SYNC)? else {
        return Ok(BTreeMap::new());
    };
    match serde_json::from_str(&json) {
        Ok(map) => Ok(map),
        Err(e) => {
            // The records only inform; a damaged set starts over rather than stopping status.
            tracing::warn!(error = %e, "the per-document sync records are unreadable; starting them over");
            Ok(BTreeMap::new())
        }
    }
}

/// Keeps the per-document records while a sync runs: which documents the link talked about,
/// and after each quiet moment or at the end, which are in sync and which were left behind.
pub(crate) struct DocBook {
    path: PathBuf,
    seen: BTreeSet<DocumentId>,
}

impl DocBook {
    /// A book for the store at `path`.
    pub(crate) fn new(path: &Path) -> DocBook {
        DocBook {
            path: path.to_path_buf(),
            seen: BTreeSet::new(),
        }
    }

    /// Notes the document a frame is about.
    pub(crate) fn saw(&mut self, frame: &[u8]) {
        if let Some(doc) = Message::decode(frame).ok().and_then(|m| m.document_id()) {
            self.seen.insert(doc);
        }
    }

    /// The exchange is quiet: documents the relay answered, that are not behind and that it
    /// has, are in sync now.
    pub(crate) fn record_quiet(&mut self, session: &mut Session<'_>) {
        let behind: BTreeSet<DocumentId> = session
            .unsent()
            .into_iter()
            .chain(session.unanswered())
            .collect();
        let unavailable = session.stats().unavailable.clone();
        let now = now();
        self.update(|book| {
            for doc in &self.seen {
                let entry = book.entry(*doc).or_default();
                if unavailable.contains(doc) {
                    entry.last_error = Some(format!(
                        "{now} the relay does not have this document or will not give it to this device"
                    ));
                } else if !behind.contains(doc) {
                    entry.last_sync = Some(now.clone());
                    entry.last_error = None;
                }
            }
        });
    }

    /// The connection ended: if it ended early, the documents still behind get the reason.
    pub(crate) fn record_end(&mut self, session: &mut Session<'_>, outcome: &Outcome) {
        let reason = match outcome {
            Outcome::Complete | Outcome::Stopped => return,
            Outcome::TimedOut => "the relay did not answer in time".to_owned(),
            Outcome::LinkLost { reason } => format!("the link dropped: {reason}"),
            Outcome::BudgetReached { budget } => {
                format!("left for the next sync: the budget of {budget} bytes was reached")
            }
        };
        let behind: BTreeSet<DocumentId> = session
            .unsent()
            .into_iter()
            .chain(session.unanswered())
            .collect();
        let now = now();
        self.update(|book| {
            for doc in &behind {
                book.entry(*doc).or_default().last_error = Some(format!("{now} {reason}"));
            }
        });
    }

    /// Reads, changes and writes the records through a handle of its own: the session holds
    /// the device's main one. A failure costs only the record, so it is logged.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<DocumentId, DocSync>)) {
        let result = Store::open(&self.path).and_then(|store| {
            let mut book = read_book(&store)?;
            change(&mut book);
            for record in book.values_mut() {
                record.id = None;
            }
            store.set_meta(keys::DOC_SYNC, &serde_json::to_string(&book)?)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record per-document sync status");
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
