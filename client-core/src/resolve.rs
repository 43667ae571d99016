//! Resolving a conflict: writing one of a field's concurrent values again.
//!
//! [`crate::report::conflicts`] lists the fields that devices wrote concurrently, each value
//! with the change that wrote it. A person who decides writes the chosen value once more, in a
//! change of their own that sees all the concurrent ones: from then on the field has one value
//! everywhere, and the history says who decided.
//!
//! The choice names a value by the change that wrote it, not by the value itself: whoever
//! resolves can only pick among what is there, and a choice made on a stale list (another
//! coordinator decided first) is refused rather than silently overwriting the newer decision.
//!
//! Rights are those of [`Coalition::apply`]: [`access::check_write`] with the author's roles in
//! the manifest, for the document, owner and collection written. The value is written as it was
//! stored (scalars with their type, lists, maps and text copied deeply), so no validation is
//! run again: every candidate was written through `apply` by its author.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{hydrate, AutoCommit, ChangeHash, ObjId, ObjType, Prop, ReadDoc, Value, ROOT};
use serde::{Deserialize, Serialize};

use crate::access;
use crate::coalition::{describe, read_collection, Coalition, CommitInfo, Identity};
use crate::error::EditError;
use crate::model::{collections, keys, Member, Role};
use crate::report::WHOLE_ENTITY;
use crate::sync::DocumentId;

/// Which value of which conflicting field to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// The collection of the entity, e.g. `hazard_areas`.
    pub collection: String,
    /// The entity id.
    pub id: String,
    /// The field, or [`WHOLE_ENTITY`] (`*`) when whole entities were written concurrently.
    pub field: String,
    /// The change (hash, hex) that wrote the value to keep, as the conflict lists it.
    pub change: String,
}

/// Why a conflict could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The author may not write there, or the document is not a coalition document.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// Automerge refused to read or write.
    #[error("automerge refused the operation")]
    Automerge(#[from] automerge::AutomergeError),
    /// The field has a single value (it was never in conflict, or was resolved already).
    #[error("{at} is not in conflict (any more)")]
    NotAConflict {
        /// `collection/id/field`.
        at: String,
    },
    /// None of the field's concurrent values was written by that change.
    #[error("{at} has no concurrent value written by change {change}")]
    NoSuchValue {
        /// `collection/id/field`.
        at: String,
        /// The change asked for.
        change: String,
    },
    /// The collection is not one this document holds, or is merged as text (narrative).
    #[error("{collection} cannot be resolved in a {kind} document")]
    NotResolvable {
        /// The collection asked for.
        collection: String,
        /// The document kind.
        kind: String,
    },
}

/// The roles `org` holds according to a manifest document.
pub fn roles_in(manifest: &AutoCommit, org: &str) -> Result<Vec<Role>, EditError> {
    let members: std::collections::BTreeMap<String, Member> =
        read_collection(manifest, keys::MEMBERS)?;
    Ok(members.get(org).map(Member::role_set).unwrap_or_default())
}

/// Resolve a conflict of one document as `who`, holding `roles`, at unix time `now`: write
/// the chosen value again and commit. Returns the hash of the new change. Nothing is written
/// when a check fails.
///
/// The document's actor is set to `who`'s for the write and put back afterwards.
pub fn resolve_doc(
    doc: &mut AutoCommit,
    roles: &[Role],
    who: &Identity,
    choice: &Choice,
    now: i64,
) -> Result<ChangeHash, ResolveError> {
    let (kind, owner, _) = describe(doc)?;
    let collection = choice.collection.as_str();
    if collection == keys::NARRATIVE || !collections(kind).contains(&collection) {
        return Err(ResolveError::NotResolvable {
            collection: choice.collection.clone(),
            kind: kind.to_string(),
        });
    }
    access::check_write(who, roles, kind, owner.as_deref(), collection)?;
    let at = format!("{}/{}/{}", choice.collection, choice.id, choice.field);
    let not_a_conflict = || ResolveError::NotAConflict { at: at.clone() };
    let Some((Value::Object(ObjType::Map), coll)) = doc.get(ROOT, collection)? else {
        return Err(not_a_conflict());
    };
    let (obj, prop): (ObjId, &str) = if choice.field == WHOLE_ENTITY {
        (coll, choice.id.as_str())
    } else {
        match doc.get(&coll, choice.id.as_str())? {
            Some((Value::Object(ObjType::Map), entity)) => (entity, choice.field.as_str()),
            _ => return Err(not_a_conflict()),
        }
    };
    let all: Vec<(Value<'static>, ObjId)> = doc
        .get_all(&obj, prop)?
        .into_iter()
        .map(|(v, id)| (v.to_owned(), id))
        .collect();
    if all.len() < 2 {
        return Err(not_a_conflict());
    }
    let wanted = choice.change.to_ascii_lowercase();
    let Some((value, value_id)) = all.into_iter().find(|(_, id)| {
        doc.hash_for_opid(id)
            .is_some_and(|h| h.to_string() == wanted)
    }) else {
        return Err(ResolveError::NoSuchValue {
            at,
            change: choice.change.clone(),
        });
    };
    let chosen = match value {
        Value::Scalar(s) => hydrate::Value::Scalar(s.into_owned()),
        Value::Object(_) => doc.hydrate(&value_id, None)?,
    };

    let previous = doc.get_actor().clone();
    doc.set_actor(who.actor_id());
    let written = put_value(doc, &obj, prop.into(), &chosen);
    if let Err(e) = written {
        // Drop the half-written ops: nothing is committed when a write fails.
        doc.rollback();
        doc.set_actor(previous);
        return Err(e.into());
    }
    let info = CommitInfo {
        org: who.org.clone(),
        user: who.user.clone(),
        device: who.device.clone(),
        action: "resolve".into(),
        entity: choice.collection.clone(),
        id: choice.id.clone(),
        fields: if choice.field == WHOLE_ENTITY {
            vec![]
        } else {
            vec![choice.field.clone()]
        },
    };
    let message = serde_json::to_string(&info).unwrap_or_default();
    let hash = doc.commit_with(
        CommitOptions::default()
            .with_message(message)
            .with_time(now),
    );
    doc.set_actor(previous);
    // A put always makes an op, so there is a change; `None` would mean automerge saw nothing
    // to commit, which only an empty transaction gives.
    hash.ok_or_else(not_a_conflict)
}

/// Resolve a conflict of a coalition's document `doc_id` as `who` (see [`resolve_doc`]); the
/// author's roles are read from the coalition's manifest.
pub fn resolve(
    coalition: &mut Coalition,
    doc_id: &DocumentId,
    who: &Identity,
    choice: &Choice,
    now: i64,
) -> Result<ChangeHash, ResolveError> {
    let roles = coalition.roles_of(&who.org)?;
    let doc = coalition
        .docs_mut()
        .find(|d| d.id == *doc_id)
        .ok_or_else(|| EditError::NotFound {
            what: "document",
            id: doc_id.to_string(),
        })?;
    resolve_doc(&mut doc.doc, &roles, who, choice, now)
}

/// Write a hydrated value at `obj/prop`, copying objects deeply.
fn put_value(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    value: &hydrate::Value,
) -> Result<(), automerge::AutomergeError> {
    match value {
        hydrate::Value::Scalar(s) => doc.put(obj, prop, s.clone()),
        hydrate::Value::Map(m) => {
            let new = doc.put_object(obj, prop, ObjType::Map)?;
            fill_map(doc, &new, m)
        }
        hydrate::Value::List(l) => {
            let new = doc.put_object(obj, prop, ObjType::List)?;
            fill_list(doc, &new, l)
        }
        hydrate::Value::Text(t) => {
            let new = doc.put_object(obj, prop, ObjType::Text)?;
            doc.update_text(&new, t.to_string())
        }
    }
}

fn fill_map(
    doc: &mut AutoCommit,
    obj: &ObjId,
    map: &hydrate::Map,
) -> Result<(), automerge::AutomergeError> {
    for (key, v) in map.iter() {
        put_value(doc, obj, key.as_str().into(), &v.value)?;
    }
    Ok(())
}

fn fill_list(
    doc: &mut AutoCommit,
    obj: &ObjId,
    list: &hydrate::List,
) -> Result<(), automerge::AutomergeError> {
    for (index, item) in list.iter().enumerate() {
        match &item.value {
            hydrate::Value::Scalar(s) => doc.insert(obj, index, s.clone())?,
            hydrate::Value::Map(m) => {
                let new = doc.insert_object(obj, index, ObjType::Map)?;
                fill_map(doc, &new, m)?;
            }
            hydrate::Value::List(l) => {
                let new = doc.insert_object(obj, index, ObjType::List)?;
                fill_list(doc, &new, l)?;
            }
            hydrate::Value::Text(t) => {
                let new = doc.insert_object(obj, index, ObjType::Text)?;
                doc.update_text(&new, t.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::conflicts;

    fn first_conflict(c: &mut Coalition) -> crate::report::Conflict {
        let list = conflicts(c).expect("conflicts");
        list.into_iter().next().expect("the demo has conflicts")
    }

    #[test]
    fn keeping_a_value_resolves_the_conflict_and_is_attributed() -> Result<(), ResolveError> {
        let (mut c, cast) = crate::demo::bosnia().expect("demo");
        let before = conflicts(&mut c)?.len();
        let conflict = first_conflict(&mut c);
        let chosen = conflict.values[1].clone();
        let doc_id: DocumentId = conflict.doc.parse().expect("doc id");
        let who = Identity {
            device: "dashboard".into(),
            ..cast.ministry.clone()
        };
        let choice = Choice {
            collection: conflict.collection.clone(),
            id: conflict.id.clone(),
            field: conflict.field.clone(),
            change: chosen.change.clone(),
        };
        resolve(&mut c, &doc_id, &who, &choice, 1_700_000_000)?;
        let after = conflicts(&mut c)?;
        assert_eq!(after.len(), before - 1);
        assert!(!after
            .iter()
            .any(|x| x.id == conflict.id && x.field == conflict.field));
        // The field now holds the chosen value.
        let doc = &c.doc(&doc_id).expect("doc").doc;
        let (_, coll) = doc.get(ROOT, conflict.collection.as_str())?.expect("coll");
        let (_, entity) = doc.get(&coll, conflict.id.as_str())?.expect("entity");
        let (v, _) = doc.get(&entity, conflict.field.as_str())?.expect("field");
        assert_eq!(
            crate::coalition::json_of(&hydrate::Value::Scalar(v.into_scalar().expect("scalar"))),
            chosen.value
        );
        // The history names the coordinator, device "dashboard".
        let history = crate::report::history(
            &mut c,
            &crate::report::HistoryFilter {
                entity_id: Some(conflict.id.clone()),
                ..Default::default()
            },
        )?;
        let last = history.last().expect("a history entry");
        assert_eq!(last.action.as_deref(), Some("resolve"));
        assert_eq!(last.user.as_deref(), Some(who.user.as_str()));
        assert_eq!(last.device.as_deref(), Some("dashboard"));

        // The same choice again is stale.
        assert!(matches!(
            resolve(&mut c, &doc_id, &who, &choice, 1_700_000_001),
            Err(ResolveError::NotAConflict { .. })
        ));
        Ok(())
    }

    #[test]
    fn an_observer_or_donor_cannot_resolve_and_nothing_is_written() -> Result<(), ResolveError> {
        let (mut c, cast) = crate::demo::bosnia().expect("demo");
        let conflict = first_conflict(&mut c);
        let doc_id: DocumentId = conflict.doc.parse().expect("doc id");
        let heads = c.doc(&doc_id).expect("doc").doc.clone().get_heads();
        let who = Identity {
            user: "sara.lind".into(),
            org: "CMC".into(),
            device: "dashboard".into(),
            actor: cast.ministry.actor.clone(),
        };
        let choice = Choice {
            collection: conflict.collection.clone(),
            id: conflict.id.clone(),
            field: conflict.field.clone(),
            change: conflict.values[0].change.clone(),
        };
        let refused = resolve(&mut c, &doc_id, &who, &choice, 1_700_000_000);
        assert!(matches!(
            refused,
            Err(ResolveError::Edit(EditError::NotAllowed { .. }))
        ));
        assert_eq!(c.doc(&doc_id).expect("doc").doc.clone().get_heads(), heads);

        let unknown = Choice {
            change: "00".repeat(32),
            ..choice
        };
        assert!(matches!(
            resolve(&mut c, &doc_id, &cast.ministry, &unknown, 1_700_000_000),
            Err(ResolveError::NoSuchValue { .. })
        ));
        Ok(())
    }
}
