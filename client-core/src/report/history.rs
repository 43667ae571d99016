//! History: who changed what, when, per entity.
//!
//! Read from the changes themselves: every commit made by this software carries its author's
//! organisation, user and device and the entity it touched. Changes made by other software
//! (a stock automerge-repo client) are listed with their actor instead.

use serde::Serialize;

use crate::coalition::{Coalition, CommitInfo};
use crate::error::EditError;
use crate::model::DocKind;

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Unix time, seconds.
    pub time: i64,
    /// The document kind.
    pub doc_kind: DocKind,
    /// The document id.
    pub doc: String,
    /// The organisation.
    pub org: Option<String>,
    /// The person.
    pub user: Option<String>,
    /// The device.
    pub device: Option<String>,
    /// The Automerge actor, hex.
    pub actor: String,
    /// What was done.
    pub action: Option<String>,
    /// The entity kind.
    pub entity: Option<String>,
    /// The entity id.
    pub id: Option<String>,
    /// The fields written.
    pub fields: Vec<String>,
    /// The change hash.
    pub change: String,
}

/// Which changes to list; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only this entity id.
    pub entity_id: Option<String>,
    /// Only this organisation.
    pub org: Option<String>,
    /// Only this person.
    pub user: Option<String>,
    /// Only this entity kind (collection).
    pub entity: Option<String>,
    /// Only changes at or after this unix time.
    pub since: Option<i64>,
    /// Only changes at or before this unix time.
    pub until: Option<i64>,
}

/// The changes of every document, oldest first (ties by change hash, so every device lists
/// them in the same order).
pub fn history(
    coalition: &mut Coalition,
    filter: &HistoryFilter,
) -> Result<Vec<HistoryEntry>, EditError> {
    let mut out = Vec::new();
    for d in coalition.docs_mut() {
        let doc_id = d.id.to_string();
        let kind = d.kind;
        for meta in d.doc.get_changes_meta(&[]) {
            let info = CommitInfo::parse(meta.message.as_deref());
            let entry = HistoryEntry {
                time: meta.timestamp,
                doc_kind: kind,
                doc: doc_id.clone(),
                org: info.as_ref().map(|i| i.org.clone()),
                user: info.as_ref().map(|i| i.user.clone()),
                device: info.as_ref().map(|i| i.device.clone()),
                actor: meta.actor.to_hex_string(),
                action: info.as_ref().map(|i| i.action.clone()),
                entity: info.as_ref().map(|i| i.entity.clone()),
                id: info.as_ref().map(|i| i.id.clone()),
                fields: info.map(|i| i.fields).unwrap_or_default(),
                change: meta.hash.to_string(),
            };
            if matches(&entry, filter) {
                out.push(entry);
            }
        }
    }
    out.sort_by(|a, b| (a.time, &a.change).cmp(&(b.time, &b.change)));
    Ok(out)
}

fn matches(e: &HistoryEntry, f: &HistoryFilter) -> bool {
    let eq = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
    };
    eq(&f.entity_id, &e.id)
        && eq(&f.org, &e.org)
        && eq(&f.user, &e.user)
        && eq(&f.entity, &e.entity)
        && f.since.is_none_or(|s| e.time >= s)
        && f.until.is_none_or(|u| e.time <= u)
}
