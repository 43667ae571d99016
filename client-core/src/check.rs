//! Checking changes that arrive from a peer before they are applied.
//!
//! A relay (or any peer that holds the shared copy) judges each incoming change by its
//! author, not by whoever forwarded it: the change's actor must belong to a known author
//! whose roles may write what the change touches in this document, and the document after the
//! change must still pass every hard rule of [`crate::validate`] that can be checked on the
//! document alone. A refused change, and every change that depends on it, is kept aside with
//! the reason; nothing of it reaches the document.
//!
//! The check applies each change to a fork of the document and reads what it touched from the
//! fork's patches, so it judges what the change does, not what its commit message claims.

use std::collections::{BTreeSet, HashSet};

use automerge::{ActorId, AutoCommit, Change, ChangeHash, PatchAction, Prop, ReadDoc, ROOT};

use crate::access;
use crate::coalition::{json_of, META_COALITION, META_KIND, META_OWNER};
use crate::error::EditError;
use crate::model::{collections, is_record, keys, DocKind, Pledge, Role};
use crate::validate;

/// Who wrote a change, as far as the checker needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The author's organisation.
    pub org: String,
    /// The roles the organisation holds in the coalition.
    pub roles: Vec<Role>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The change's actor is not registered to any enrolled device.
    #[error("actor {actor} is not registered to any device of this coalition")]
    UnknownAuthor {
        /// The actor, hex.
        actor: String,
    },
    /// The change's actor belongs to a device that was revoked.
    #[error("actor {actor} belongs to device {device}, which was revoked")]
    AuthorRevoked {
        /// The actor, hex.
        actor: String,
        /// The device.
        device: String,
    },
    /// The author may not write what the change touches.
    #[error(transparent)]
    NotAllowed(EditError),
    /// The change creates a document its author may not create.
    #[error("{org} ({roles}) may not create a document of kind {kind}{}", owner.as_ref().map(|o| format!(" owned by {o}")).unwrap_or_default())]
    CannotCreate {
        /// The author's organisation.
        org: String,
        /// Its roles, comma separated.
        roles: String,
        /// The kind of document.
        kind: DocKind,
        /// Its owner, if any.
        owner: Option<String>,
    },
    /// The document after the change breaks a hard rule.
    #[error("{0}")]
    Invalid(#[source] EditError),
    /// The change rewrites or deletes a record, which is immutable.
    #[error("{collection}/{id} is an immutable record and cannot be {verb}")]
    RecordChanged {
        /// The collection.
        collection: String,
        /// The record.
        id: String,
        /// "changed" or "deleted".
        verb: &'static str,
    },
    /// The change deletes an entity; entities are kept (only members can be removed).
    #[error("{collection}/{id} cannot be deleted")]
    Deleted {
        /// The collection.
        collection: String,
        /// The entity.
        id: String,
    },
    /// The change rewrites what the document is (kind, owner, coalition) or adds keys the
    /// model does not have.
    #[error("the change writes `{key}` at the root of the {kind} document")]
    Structure {
        /// The document kind.
        kind: DocKind,
        /// The root key.
        key: String,
    },
    /// The change depends on a change that was refused.
    #[error("it depends on change {0}, which was refused")]
    DependsOnRefused(ChangeHash),
    /// The change does not apply to the document.
    #[error("the change does not apply: {0}")]
    Malformed(String),
}

/// A change that was refused, with what a coordinator needs to review it.
#[derive(Debug)]
pub struct Refused {
    /// The change, whole (its raw bytes can be stored and applied later if accepted).
    pub change: Change,
    /// Why.
    pub reason: Refusal,
}

/// The outcome of checking a batch of changes.
#[derive(Debug, Default)]
pub struct Checked {
    /// Changes that may be applied, in an order that respects their dependencies.
    pub accepted: Vec<Change>,
    /// Changes refused, with the reason.
    pub refused: Vec<Refused>,
    /// Changes whose dependencies are neither in the document nor in the batch: they cannot be
    /// judged yet and are neither applied nor refused.
    pub waiting: Vec<Change>,
    /// Times the document was copied whole to try the changes on: the copy kept from the last
    /// check was out of step with it (or there was none), or a refusal started it again.
    pub copies: usize,
}

/// Check `changes` against `doc` (of `kind`, owned by `owner`), with `author` telling who an
/// actor is (or why its changes are refused whatever they do). `doc` itself is not modified.
pub fn check_changes(
    doc: &mut AutoCommit,
    kind: DocKind,
    owner: Option<&str>,
    changes: Vec<Change>,
    author: &mut dyn FnMut(&ActorId) -> Result<Author, Refusal>,
) -> Checked {
    check_changes_on(doc, &mut None, kind, owner, changes, author)
}

/// [`check_changes`] with a copy of `doc` kept between calls in `copy`: the changes are tried
/// on it, and it is left holding `doc` and the accepted changes. Once the caller applied those
/// to `doc`, the next call finds the copy in step and skips copying the document again (a
/// copy out of step with `doc`, by its heads, is replaced).
pub fn check_changes_on(
    doc: &mut AutoCommit,
    copy: &mut Option<AutoCommit>,
    kind: DocKind,
    owner: Option<&str>,
    changes: Vec<Change>,
    author: &mut dyn FnMut(&ActorId) -> Result<Author, Refusal>,
) -> Checked {
    let mut out = Checked::default();
    let known: HashSet<ChangeHash> = changes.iter().map(Change::hash).collect();
    let ordered = causal_order(doc, changes, &known, &mut out.waiting);
    let kept = copy
        .take()
        .and_then(|mut kept| (kept.get_heads() == doc.get_heads()).then_some(kept));
    let mut fork = match kept {
        Some(kept) => kept,
        None => {
            out.copies += 1;
            doc.fork()
        }
    };
    let mut refused_hashes: HashSet<ChangeHash> = HashSet::new();
    for change in ordered {
        if has_change(&mut fork, &change.hash()) {
            continue;
        }
        if let Some(dep) = change.deps().iter().find(|d| refused_hashes.contains(d)) {
            refused_hashes.insert(change.hash());
            let reason = Refusal::DependsOnRefused(*dep);
            out.refused.push(Refused { change, reason });
            continue;
        }
        // Until a change of the batch is accepted, the document itself is the state before
        // the change: reading it is cheaper than reading the fork at earlier heads.
        let before = out.accepted.is_empty().then_some(&*doc);
        match judge(&mut fork, before, kind, owner, &change, author) {
            Ok(()) => out.accepted.push(change),
            Err(reason) => {
                refused_hashes.insert(change.hash());
                out.refused.push(Refused { change, reason });
                // Rebuild the fork without the refused change. Refusals are rare (devices
                // check the same rules before committing), so the cost is acceptable.
                fork = doc.fork();
                out.copies += 1;
                if let Err(e) = fork.apply_changes(out.accepted.iter().cloned()) {
                    tracing::error!(error = %e, "re-applying accepted changes to a fork failed");
                }
            }
        }
    }
    *copy = Some(fork);
    out
}

/// Whether `doc` holds the change `hash` (or has it queued, waiting for its dependencies).
/// Cheap, unlike `get_change_by_hash`, which rebuilds the change from the document's columns:
/// checking every dependency of every incoming change that way was a large part of the cost
/// of checking changes on a busy relay.
pub fn has_change(doc: &mut AutoCommit, hash: &ChangeHash) -> bool {
    !doc.get_missing_deps(&[*hash]).contains(hash)
}

/// Order the batch so that every change comes after the changes of the batch it depends on.
/// Changes with a dependency that is neither in the document nor in the batch go to `waiting`.
fn causal_order(
    doc: &mut AutoCommit,
    changes: Vec<Change>,
    known: &HashSet<ChangeHash>,
    waiting: &mut Vec<Change>,
) -> Vec<Change> {
    let mut pending = changes;
    let mut placed: HashSet<ChangeHash> = HashSet::new();
    let mut out = Vec::with_capacity(pending.len());
    loop {
        let before = out.len();
        let mut rest = Vec::new();
        for c in pending {
            let ready = c
                .deps()
                .iter()
                .all(|d| placed.contains(d) || (!known.contains(d) && has_change(doc, d)));
            if ready {
                placed.insert(c.hash());
                out.push(c);
            } else {
                rest.push(c);
            }
        }
        pending = rest;
        if pending.is_empty() || out.len() == before {
            break;
        }
    }
    waiting.extend(pending);
    out
}

/// Apply one change to the fork and judge it; on refusal the fork holds the change and must be
/// rebuilt by the caller. `before_doc`, when given, is the document as it was before the change,
/// read for what the change replaced instead of reading the fork at earlier heads (which makes
/// Automerge work out the clock of those heads from the whole history).
fn judge(
    fork: &mut AutoCommit,
    before_doc: Option<&AutoCommit>,
    kind: DocKind,
    owner: Option<&str>,
    change: &Change,
    author: &mut dyn FnMut(&ActorId) -> Result<Author, Refusal>,
) -> Result<(), Refusal> {
    let who = author(change.actor_id())?;
    let before = fork.get_heads();
    // A document is created by the change that first describes it; a stock client's
    // `repo.create()` syncs an empty change before that one.
    let was_empty = fork.get(ROOT, META_KIND).ok().flatten().is_none();
    // Patches recorded while the change is applied: without the cursor, `diff` would scan every
    // operation of the document for each change.
    fork.update_diff_cursor();
    fork.apply_changes([change.clone()])
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    let after = fork.get_heads();
    let patches = fork.diff(&before, &after);

    // What the change touched: collections and entity keys, and root keys.
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    let mut deleted: BTreeSet<(String, String)> = BTreeSet::new();
    for p in &patches {
        let key_of = |action: &PatchAction| match action {
            PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key.clone()),
            PatchAction::Conflict {
                prop: Prop::Map(key),
            }
            | PatchAction::Increment {
                prop: Prop::Map(key),
                ..
            } => Some(key.clone()),
            _ => None,
        };
        let segment = |i: usize| match p.path.get(i) {
            Some((_, Prop::Map(k))) => Some(k.clone()),
            _ => None,
        };
        match p.path.len() {
            0 => {
                if let Some(key) = key_of(&p.action) {
                    root_key(kind, owner, &key, was_empty, fork)?;
                    if key == META_KIND && !access::may_create(&who.org, &who.roles, kind, owner) {
                        return Err(Refusal::CannotCreate {
                            org: who.org.clone(),
                            roles: if who.roles.is_empty() {
                                "no role".to_string()
                            } else {
                                who.roles
                                    .iter()
                                    .map(|r| r.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            },
                            kind,
                            owner: owner.map(str::to_string),
                        });
                    }
                }
            }
            1 => {
                let (Some(collection), Some(key)) = (segment(0), key_of(&p.action)) else {
                    continue;
                };
                if matches!(p.action, PatchAction::DeleteMap { .. }) {
                    deleted.insert((collection.clone(), key.clone()));
                }
                touched.insert((collection, key));
            }
            _ => {
                if let (Some(collection), Some(key)) = (segment(0), segment(1)) {
                    touched.insert((collection, key));
                }
            }
        }
    }

    let org = who.org.as_str();
    for (collection, key) in &touched {
        if !access::may_write(org, &who.roles, kind, owner, collection) {
            return Err(Refusal::NotAllowed(EditError::NotAllowed {
                org: org.to_string(),
                roles: who.roles.clone(),
                kind,
                owner: owner.map(str::to_string),
                collection: collection.clone(),
            }));
        }
        if !collections(kind).contains(&collection.as_str()) {
            return Err(Refusal::Structure {
                kind,
                key: collection.clone(),
            });
        }
        let existed = match before_doc {
            Some(doc) => entity_at(doc, collection, key, None),
            None => entity_at(fork, collection, key, Some(&before)),
        }
        .map_err(Refusal::Invalid)?;
        if deleted.contains(&(collection.clone(), key.clone())) {
            if collection != keys::MEMBERS {
                let verb = "deleted";
                return Err(if is_record(collection) {
                    Refusal::RecordChanged {
                        collection: collection.clone(),
                        id: key.clone(),
                        verb,
                    }
                } else {
                    Refusal::Deleted {
                        collection: collection.clone(),
                        id: key.clone(),
                    }
                });
            }
            continue;
        }
        if existed.is_some() && is_record(collection) && collection != keys::APPROVALS {
            return Err(Refusal::RecordChanged {
                collection: collection.clone(),
                id: key.clone(),
                verb: "changed",
            });
        }
        let Some(now) = entity_at(fork, collection, key, None).map_err(Refusal::Invalid)? else {
            continue;
        };
        validate::stored(collection, key, owner, now.clone()).map_err(Refusal::Invalid)?;
        if collection == keys::PLEDGES {
            if let Some(old) = existed {
                let (Ok(old), Ok(new)) = (
                    serde_json::from_value::<Pledge>(old),
                    serde_json::from_value::<Pledge>(now),
                ) else {
                    continue;
                };
                validate::pledge_moves_forward(&old, &new).map_err(Refusal::Invalid)?;
            }
        }
    }
    Ok(())
}

/// A root key may only be written when the document is created, and only the keys that
/// describe it and its collections; the description must match what the relay knows.
fn root_key(
    kind: DocKind,
    owner: Option<&str>,
    key: &str,
    was_empty: bool,
    fork: &AutoCommit,
) -> Result<(), Refusal> {
    let structure = || Refusal::Structure {
        kind,
        key: key.to_string(),
    };
    if !was_empty {
        return Err(structure());
    }
    let text = |k: &str| match fork.get(ROOT, k).ok().flatten() {
        Some((automerge::Value::Scalar(s), _)) => s.as_str().map(str::to_string),
        _ => None,
    };
    match key {
        META_KIND if text(META_KIND).as_deref() == Some(kind.as_str()) => Ok(()),
        META_OWNER if text(META_OWNER).as_deref() == owner => Ok(()),
        META_COALITION => Ok(()),
        k if collections(kind).contains(&k)
            || (kind == DocKind::Manifest && k == keys::COALITION) =>
        {
            Ok(())
        }
        _ => Err(structure()),
    }
}

/// An entity as JSON, now or at `heads`.
fn entity_at(
    doc: &AutoCommit,
    collection: &str,
    key: &str,
    heads: Option<&[ChangeHash]>,
) -> Result<Option<serde_json::Value>, EditError> {
    let coll = match heads {
        Some(h) => doc.get_at(ROOT, collection, h)?,
        None => doc.get(ROOT, collection)?,
    };
    let Some((_, coll)) = coll else {
        return Ok(None);
    };
    let value = match heads {
        Some(h) => doc.get_at(&coll, key, h)?,
        None => doc.get(&coll, key)?,
    };
    let Some((value, id)) = value else {
        return Ok(None);
    };
    let hydrated = match value {
        automerge::Value::Object(_) => doc.hydrate(&id, heads)?,
        automerge::Value::Scalar(s) => automerge::hydrate::Value::Scalar(s.into_owned()),
    };
    let json = json_of(&hydrated);
    // Records are JSON strings.
    Ok(Some(match json {
        serde_json::Value::String(text) if is_record(collection) => {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        }
        other => other,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::ObjType;

    use super::*;
    use crate::coalition::{Coalition, Edit, Identity};

    /// The patches the judge reads through the diff cursor are the ones a scan of the whole
    /// document finds, for records added, replaced, nested and deleted.
    #[test]
    fn patches_through_the_cursor_match_a_full_diff() {
        let mut doc = AutoCommit::new();
        let items = doc.put_object(ROOT, "items", ObjType::Map).expect("map");
        doc.put(&items, "kept", "v0").expect("put");
        doc.commit_with(CommitOptions::default().with_time(1));
        let mut author = doc.fork();
        let mut changes = Vec::new();
        for n in 0..4 {
            author
                .put(&items, format!("k{n}"), format!("v{n}"))
                .expect("put");
            let nested = author
                .put_object(&items, format!("o{n}"), ObjType::Map)
                .expect("obj");
            author.put(&nested, "field", n).expect("put");
            if n == 2 {
                author.delete(&items, "kept").expect("delete");
            }
            let hash = author
                .commit_with(CommitOptions::default().with_time(2 + n))
                .expect("hash");
            changes.push(author.get_change_by_hash(&hash).expect("change"));
        }
        let (mut cursor, mut scan) = (doc.fork(), doc.fork());
        for change in changes {
            let before = cursor.get_heads();
            cursor.update_diff_cursor();
            cursor.apply_changes([change.clone()]).expect("apply");
            scan.apply_changes([change]).expect("apply");
            let after = cursor.get_heads();
            assert_eq!(cursor.diff(&before, &after), scan.diff(&before, &after));
        }
    }
    use crate::fixture::{area, entry, fixture, Fixture, T0};
    use crate::model::{HazardClass, Method};

    /// Who each fixture actor is, as a relay's registry would say.
    fn registry(f: &Fixture) -> HashMap<String, Author> {
        let mut m = HashMap::new();
        for who in [
            &f.coordinator,
            &f.nmac,
            &f.donor,
            &f.other_donor,
            &f.operator,
            &f.other_operator,
            &f.observer,
        ] {
            let roles = f.c.roles_of(&who.org).expect("roles");
            m.insert(
                who.actor.clone(),
                Author {
                    org: who.org.clone(),
                    roles,
                },
            );
        }
        m
    }

    /// The registry as the checker asks it: an unknown actor is refused.
    fn lookup_in(
        reg: &HashMap<String, Author>,
    ) -> impl FnMut(&ActorId) -> Result<Author, Refusal> + '_ {
        |a: &ActorId| {
            reg.get(&a.to_hex_string())
                .cloned()
                .ok_or_else(|| Refusal::UnknownAuthor {
                    actor: a.to_hex_string(),
                })
        }
    }

    fn doc_of(c: &Coalition, kind: DocKind, owner: Option<&str>) -> AutoCommit {
        c.find_doc(kind, owner).expect("document").doc.clone()
    }

    /// Changes made on a copy of a document by `who`, written raw (bypassing the device's own
    /// checks, as a buggy or hostile client would).
    fn raw(doc: &AutoCommit, who: &Identity, write: impl FnOnce(&mut AutoCommit)) -> Vec<Change> {
        let mut copy = doc.clone().with_actor(who.actor_id());
        let before = copy.get_heads();
        write(&mut copy);
        copy.commit_with(CommitOptions::default().with_time(T0).with_message("raw"));
        copy.get_changes(&before)
    }

    fn check(f: &Fixture, kind: DocKind, owner: Option<&str>, changes: Vec<Change>) -> Checked {
        let reg = registry(f);
        let mut doc = doc_of(&f.c, kind, owner);
        let heads = doc.get_heads();
        let out = check_changes(&mut doc, kind, owner, changes, &mut lookup_in(&reg));
        assert_eq!(
            doc.get_heads(),
            heads,
            "checking must not modify the document"
        );
        out
    }

    fn reason(out: &Checked) -> String {
        assert!(
            out.accepted.is_empty(),
            "nothing should be accepted: {:?}",
            out.accepted.len()
        );
        assert_eq!(out.refused.len(), 1, "{:?}", out.refused);
        out.refused[0].reason.to_string()
    }

    fn put_area(doc: &mut AutoCommit, key: &str, field: &str, value: i64) {
        let (_, coll) = doc
            .get(ROOT, keys::HAZARD_AREAS)
            .expect("get")
            .expect("collection");
        let (_, a) = doc.get(&coll, key).expect("get").expect("area");
        doc.put(&a, field, value).expect("put");
    }

    #[test]
    fn honest_changes_made_through_edits_are_accepted() {
        let f = fixture();
        let mut device = f.c.clone();
        let plan = doc_of(&f.c, DocKind::Plan, None);
        let before = plan.clone().get_heads();
        device
            .apply(
                &f.nmac,
                Edit::PutHazardArea(area("a-new", "HA-9", HazardClass::Cha, 500)),
                T0,
            )
            .expect("edit");
        let mut edited = doc_of(&device, DocKind::Plan, None);
        let changes = edited.get_changes(&before);
        let out = check(&f, DocKind::Plan, None, changes);
        assert_eq!(
            (out.accepted.len(), out.refused.len()),
            (1, 0),
            "{:?}",
            out.refused
        );
    }

    /// The copy kept between calls is used while in step with the document, replaced when
    /// not, and judges as a fresh copy would: a refused change is not in the copy afterwards.
    #[test]
    fn a_kept_copy_judges_like_a_fresh_one() {
        let f = fixture();
        let reg = registry(&f);
        let mut doc = doc_of(&f.c, DocKind::Plan, None);
        let mut copy = None;
        let good = raw(&doc, &f.nmac, |d| {
            put_area(d, "area-sha", "baseline_m2", 12_345)
        });
        let out = check_changes_on(
            &mut doc,
            &mut copy,
            DocKind::Plan,
            None,
            good,
            &mut lookup_in(&reg),
        );
        assert_eq!(
            (out.accepted.len(), out.refused.len(), out.waiting.len()),
            (1, 0, 0)
        );
        doc.apply_changes(out.accepted).expect("apply");
        let kept = copy.as_mut().expect("a copy").get_heads();
        assert_eq!(kept, doc.get_heads(), "the copy holds the accepted change");
        // In step: the copy is used, and a refused change leaves it in step.
        let bad = raw(&doc, &f.donor, |d| put_area(d, "area-sha", "priority", 3));
        let out = check_changes_on(
            &mut doc,
            &mut copy,
            DocKind::Plan,
            None,
            bad,
            &mut lookup_in(&reg),
        );
        assert_eq!(
            reason(&out),
            "donor-DE (donor) may not write hazard_areas in the plan document"
        );
        assert_eq!(copy.as_mut().expect("a copy").get_heads(), doc.get_heads());
        // Out of step (the document moved on without it): replaced, and the verdict holds.
        let moved = raw(&doc, &f.nmac, |d| {
            put_area(d, "area-sha", "baseline_m2", 12_346)
        });
        doc.apply_changes(moved).expect("apply");
        let negative = raw(&doc, &f.nmac, |d| {
            put_area(d, "area-sha", "baseline_m2", -1)
        });
        let out = check_changes_on(
            &mut doc,
            &mut copy,
            DocKind::Plan,
            None,
            negative,
            &mut lookup_in(&reg),
        );
        assert_eq!(
            reason(&out),
            "hazard_areas/area-sha/baseline_m2: must be zero or more, got -1"
        );
        assert_eq!(copy.as_mut().expect("a copy").get_heads(), doc.get_heads());
    }

    #[test]
    fn authors_are_judged_by_their_own_rights() {
        let f = fixture();
        let plan = doc_of(&f.c, DocKind::Plan, None);
        // A donor writes the plan.
        let changes = raw(&plan, &f.donor, |d| put_area(d, "area-sha", "priority", 1));
        assert_eq!(
            reason(&check(&f, DocKind::Plan, None, changes)),
            "donor-DE (donor) may not write hazard_areas in the plan document"
        );
        // An operator approves (its own entry, or any).
        let changes = raw(&plan, &f.operator, |d| {
            let (_, coll) = d
                .get(ROOT, keys::APPROVALS)
                .expect("get")
                .expect("approvals");
            d.put(
                &coll,
                "e1",
                r#"{"entry_id":"e1","decision":"approved","decided_on":"2021-05-02","note":null}"#,
            )
            .expect("put");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Plan, None, changes)),
            "NPA (operator) may not write approvals in the plan document"
        );
        // An observer writes a pledge in a donor's document.
        let partner = doc_of(&f.c, DocKind::Partner, Some("donor-DE"));
        let changes = raw(&partner, &f.observer, |d| {
            let (_, coll) = d.get(ROOT, keys::PLEDGES).expect("get").expect("pledges");
            d.put_object(&coll, "p9", ObjType::Map).expect("put");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Partner, Some("donor-DE"), changes)),
            "CMC (observer) may not write pledges in the partner document of donor-DE"
        );
        // An actor nobody registered.
        let stranger = crate::fixture::who("x", "NPA", 0x77);
        let changes = raw(&plan, &stranger, |d| put_area(d, "area-sha", "priority", 1));
        assert_eq!(
            reason(&check(&f, DocKind::Plan, None, changes)),
            "actor 77777777777777777777777777777777 is not registered to any device of this coalition"
        );
    }

    #[test]
    fn the_document_after_a_change_must_pass_the_hard_rules() {
        let f = fixture();
        let plan = doc_of(&f.c, DocKind::Plan, None);
        let changes = raw(&plan, &f.nmac, |d| {
            put_area(d, "area-sha", "baseline_m2", -10)
        });
        assert_eq!(
            reason(&check(&f, DocKind::Plan, None, changes)),
            "hazard_areas/area-sha/baseline_m2: must be zero or more, got -10"
        );
        // A release whose category does not match its method, written as a raw record.
        let operator = doc_of(&f.c, DocKind::Operator, Some("NPA"));
        let mut e = entry("e7", "area-cha", "NPA", Method::Nts, 0, "2021-05-01");
        e.cleared_m2 = 10;
        let json = serde_json::to_string(&e).expect("json");
        let changes = raw(&operator, &f.operator, |d| {
            let (_, coll) = d.get(ROOT, keys::RELEASES).expect("get").expect("releases");
            d.put(&coll, "e7", json.as_str()).expect("put");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Operator, Some("NPA"), changes)),
            "releases/e7/cleared_m2: method nts releases only cancelled_m2; 10 m² recorded as cleared_m2"
        );
        // An operator recording an entry in another operator's name, in its own document.
        let theirs = serde_json::to_string(&entry(
            "e8",
            "area-cha",
            "HALO",
            Method::Clearance,
            5,
            "2021-05-01",
        ))
        .expect("json");
        let changes = raw(&operator, &f.operator, |d| {
            let (_, coll) = d.get(ROOT, keys::RELEASES).expect("get").expect("releases");
            d.put(&coll, "e8", theirs.as_str()).expect("put");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Operator, Some("NPA"), changes)),
            "releases/e8/operator: NPA may only record an entry in its own name, not HALO"
        );
    }

    #[test]
    fn records_are_immutable_and_entities_are_not_deleted() {
        let mut f = fixture();
        let op = f.operator.clone();
        f.c.apply(
            &op,
            Edit::RecordRelease(entry(
                "e1",
                "area-cha",
                "NPA",
                Method::Clearance,
                100,
                "2021-05-01",
            )),
            T0,
        )
        .expect("entry");
        let operator = doc_of(&f.c, DocKind::Operator, Some("NPA"));
        let bigger = serde_json::to_string(&entry(
            "e1",
            "area-cha",
            "NPA",
            Method::Clearance,
            900,
            "2021-05-01",
        ))
        .expect("json");
        let changes = raw(&operator, &f.operator, |d| {
            let (_, coll) = d.get(ROOT, keys::RELEASES).expect("get").expect("releases");
            d.put(&coll, "e1", bigger.as_str()).expect("put");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Operator, Some("NPA"), changes)),
            "releases/e1 is an immutable record and cannot be changed"
        );
        let plan = doc_of(&f.c, DocKind::Plan, None);
        let changes = raw(&plan, &f.nmac, |d| {
            let (_, coll) = d
                .get(ROOT, keys::HAZARD_AREAS)
                .expect("get")
                .expect("areas");
            d.delete(&coll, "area-sha").expect("delete");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Plan, None, changes)),
            "hazard_areas/area-sha cannot be deleted"
        );
        let changes = raw(&plan, &f.nmac, |d| {
            d.put(ROOT, META_KIND, "partner").expect("put")
        });
        assert_eq!(
            reason(&check(&f, DocKind::Plan, None, changes)),
            "the change writes `doc_kind` at the root of the plan document"
        );
    }

    #[test]
    fn a_new_document_is_accepted_whole_from_its_creator() {
        let f = fixture();
        let mut created = doc_of(&f.c, DocKind::Operator, Some("HALO"));
        let changes = created.get_changes(&[]);
        let reg = registry(&f);
        let mut lookup = lookup_in(&reg);
        let mut empty = AutoCommit::new();
        let out = check_changes(
            &mut empty,
            DocKind::Operator,
            Some("HALO"),
            changes,
            &mut lookup,
        );
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(out.accepted.len(), 1);
        // The same document presented as another operator's is refused.
        let mut empty = AutoCommit::new();
        let out = check_changes(
            &mut empty,
            DocKind::Operator,
            Some("NPA"),
            created.get_changes(&[]),
            &mut lookup,
        );
        assert_eq!(
            reason(&out),
            "the change writes `doc_owner` at the root of the operator document"
        );
    }

    #[test]
    fn a_document_is_described_after_an_empty_first_change() {
        let f = fixture();
        let reg = registry(&f);
        let mut lookup = lookup_in(&reg);
        let mut made = AutoCommit::new().with_actor(f.observer.actor_id());
        made.commit_with(
            CommitOptions::default()
                .with_time(T0)
                .with_message("create"),
        );
        let mut relay_copy = AutoCommit::new();
        relay_copy
            .apply_changes(made.get_changes(&[]))
            .expect("empty change");
        let before = made.get_heads();
        made.put(ROOT, META_KIND, "comments").expect("put");
        made.put(ROOT, META_COALITION, f.c.id().to_string())
            .expect("put");
        made.put_object(ROOT, keys::COMMENTS, ObjType::Map)
            .expect("map");
        made.commit_with(CommitOptions::default().with_time(T0 + 1));
        let out = check_changes(
            &mut relay_copy,
            DocKind::Comments,
            None,
            made.get_changes(&before),
            &mut lookup,
        );
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        assert_eq!(out.accepted.len(), 1);
        // Once described, the root is fixed.
        let before = made.get_heads();
        made.put(ROOT, META_KIND, "plan").expect("put");
        made.commit_with(CommitOptions::default().with_time(T0 + 2));
        relay_copy
            .apply_changes(out.accepted)
            .expect("apply accepted");
        let out = check_changes(
            &mut relay_copy,
            DocKind::Comments,
            None,
            made.get_changes(&before),
            &mut lookup,
        );
        assert_eq!(
            reason(&out),
            "the change writes `doc_kind` at the root of the comments document"
        );
    }

    #[test]
    fn a_donor_may_not_create_an_operator_document() {
        let f = fixture();
        let reg = registry(&f);
        let mut lookup = lookup_in(&reg);
        let mut made = AutoCommit::new().with_actor(f.donor.actor_id());
        made.put(ROOT, META_KIND, "operator").expect("put");
        made.put(ROOT, META_OWNER, f.donor.org.as_str())
            .expect("put");
        made.put(ROOT, META_COALITION, f.c.id().to_string())
            .expect("put");
        made.commit_with(CommitOptions::default().with_time(T0));
        let out = check_changes(
            &mut AutoCommit::new(),
            DocKind::Operator,
            Some(&f.donor.org),
            made.get_changes(&[]),
            &mut lookup,
        );
        assert_eq!(
            reason(&out),
            format!(
                "{} (donor) may not create a document of kind operator owned by {}",
                f.donor.org, f.donor.org
            )
        );
    }

    #[test]
    fn changes_that_depend_on_a_refused_one_are_refused_too() {
        let f = fixture();
        let plan = doc_of(&f.c, DocKind::Plan, None);
        let mut copy = plan.clone().with_actor(f.nmac.actor_id());
        let before = copy.get_heads();
        put_area(&mut copy, "area-sha", "baseline_m2", -1);
        copy.commit_with(CommitOptions::default().with_time(T0));
        put_area(&mut copy, "area-cha", "priority", 1);
        copy.commit_with(CommitOptions::default().with_time(T0 + 1));
        let changes = copy.get_changes(&before);
        let out = check(&f, DocKind::Plan, None, changes);
        assert!(out.accepted.is_empty());
        assert_eq!(out.refused.len(), 2);
        assert!(
            matches!(out.refused[1].reason, Refusal::DependsOnRefused(h) if h == out.refused[0].change.hash())
        );
    }

    #[test]
    fn a_pledge_status_never_moves_back_even_from_other_software() {
        let mut f = fixture();
        let donor = f.donor.clone();
        let p = Pledge {
            id: "p1".into(),
            donor: "donor-DE".into(),
            need_id: None,
            pillar: crate::model::Pillar::Clearance,
            amount: 10,
            currency: "EUR".into(),
            start_year: 2021,
            end_year: 2021,
            channel: "bilateral".into(),
            status: crate::model::PledgeStatus::Disbursed,
            committed_on: None,
        };
        f.c.apply(&donor, Edit::PutPledge(p), T0).expect("pledge");
        let partner = doc_of(&f.c, DocKind::Partner, Some("donor-DE"));
        let changes = raw(&partner, &donor, |d| {
            let (_, coll) = d.get(ROOT, keys::PLEDGES).expect("get").expect("pledges");
            let (_, p) = d.get(&coll, "p1").expect("get").expect("pledge");
            d.put(&p, "status", "announced").expect("put");
        });
        assert_eq!(
            reason(&check(&f, DocKind::Partner, Some("donor-DE"), changes)),
            "pledges/p1/status: a pledge's status only moves forward: disbursed cannot become announced"
        );
    }
}
