//! A coalition: its set of Automerge documents and the edits a member can make to them.
//!
//! A coalition is identified by the id of its manifest document. The manifest lists the other
//! documents; every document also names its own kind, owner and coalition at its root, so a
//! document that arrives alone (from an export file or a peer) can be placed.
//!
//! Every edit goes through [`Coalition::apply`]: it finds the document the edit belongs to,
//! checks the author's rights there, checks the hard validation rules, writes only the fields
//! that changed and commits with a real timestamp and the author's organisation, user and
//! device. If any check fails nothing is written.

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ROOT};
use autosurgeon::{hydrate_prop, reconcile_prop, Reconcile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access;
use crate::error::EditError;
use crate::ids::new_entity_id;
use crate::model::{keys, *};
use crate::sync::DocumentId;
use crate::validate;

/// Who is editing: a person of an organisation on one device.
///
/// A device uses one actor id for every document, so each change is attributable to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The person.
    pub user: String,
    /// The person's organisation (a member id in the manifest).
    pub org: String,
    /// The device's name.
    pub device: String,
    /// The device's Automerge actor id, hex.
    pub actor: String,
}

impl Identity {
    /// The actor id to set on every document this device edits. Edits check it first
    /// ([`Identity::check`]), so a damaged identity never writes under an empty actor.
    pub fn actor_id(&self) -> ActorId {
        ActorId::from(hex_decode(&self.actor).unwrap_or_default())
    }

    /// Refuse an identity whose actor is not 16 bytes of hex (a damaged store or a
    /// hand-written identity): changes under it could not be attributed.
    pub fn check(&self) -> Result<(), EditError> {
        match hex_decode(&self.actor) {
            Some(bytes) if bytes.len() == 16 => Ok(()),
            _ => Err(EditError::invalid(
                "identity",
                &self.device,
                "actor",
                format!("`{}` is not a 32-character hex actor id", self.actor),
            )),
        }
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a commit records besides its ops: who made it and what it was about.
///
/// Kept as JSON in the change's message so that any peer, including JavaScript ones, can
/// read who changed what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Organisation of the author.
    pub org: String,
    /// The author.
    pub user: String,
    /// The device.
    pub device: String,
    /// What was done, e.g. `put`, `record`, `approve`.
    pub action: String,
    /// The entity kind (collection key).
    pub entity: String,
    /// The entity id.
    pub id: String,
    /// The fields written.
    #[serde(default)]
    pub fields: Vec<String>,
}

impl CommitInfo {
    /// Read a commit message; `None` for changes made by other software.
    pub fn parse(message: Option<&str>) -> Option<CommitInfo> {
        serde_json::from_str(message?).ok()
    }
}

/// One document of a coalition.
#[derive(Debug, Clone)]
pub struct CoalitionDoc {
    /// Its id (automerge-repo compatible).
    pub id: DocumentId,
    /// What it holds.
    pub kind: DocKind,
    /// The owning organisation of a partner or operator document.
    pub owner: Option<String>,
    /// The Automerge document.
    pub doc: AutoCommit,
}

/// Where an edit was saved: what the store must persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The documents written (an edit may create a document, e.g. a new member's).
    pub docs: Vec<DocumentId>,
    /// The entity id the edit created or changed.
    pub entity_id: String,
    /// The change hash, hex.
    pub hash: Option<String>,
}

/// An edit a member makes. Upserts write only the fields that differ from the stored entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "edit", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Edit {
    /// Coordinator: the coalition's name, state and treaty status.
    SetCoalition(CoalitionInfo),
    /// Coordinator: add a member or change its roles; creates its document if it needs one.
    PutMember(Member),
    /// Coordinator: remove a member (its documents stay, read-only to it).
    RemoveMember { org: String },
    /// Coordinator: add an exchange rate.
    AddExchangeRate(ExchangeRate),
    /// NMAC: set an obligation's deadlines.
    PutObligation(Obligation),
    /// NMAC: file an extension request.
    AddExtensionRequest(ExtensionRequest),
    /// NMAC: record the decision on an extension request (granted moves the deadline).
    DecideExtension { id: String, status: ExtensionStatus },
    /// NMAC: add or edit a hazard area.
    PutHazardArea(HazardArea),
    /// NMAC: change a hazard area's baseline, keeping the old one.
    Rebaseline {
        area_id: String,
        baseline_m2: i64,
        date: String,
        reason: String,
    },
    /// NMAC: add or edit a task.
    PutTask(Task),
    /// Operator: report progress on its task.
    PutTaskProgress(TaskProgress),
    /// Operator: record a land release entry (immutable).
    RecordRelease(LandReleaseEntry),
    /// NMAC: approve or reject a land release entry.
    Approve(Approval),
    /// Ministry: add or edit a stockpile line.
    PutStockpileLine(StockpileLine),
    /// Ministry: record a destruction event.
    AddDestruction(DestructionEvent),
    /// VA focal point: set a year's aggregates.
    PutVictimAssistance(VictimAssistanceYear),
    /// Affected state: add or edit a need.
    PutNeed(Need),
    /// Donor: add or edit its pledge.
    PutPledge(Pledge),
    /// Donor: record a disbursement.
    AddDisbursement(Disbursement),
    /// Expertise partner: add or edit an offer.
    PutOffer(InKindOffer),
    /// Ministry or coordinator: rewrite a narrative section (merged as text).
    SetNarrative { section: Section, text: String },
    /// Any member: comment.
    AddComment(Comment),
}

impl Edit {
    /// The collection the edit writes.
    pub fn collection(&self) -> &'static str {
        use keys::*;
        match self {
            Edit::SetCoalition(_) => COALITION,
            Edit::PutMember(_) | Edit::RemoveMember { .. } => MEMBERS,
            Edit::AddExchangeRate(_) => EXCHANGE_RATES,
            Edit::PutObligation(_) => OBLIGATIONS,
            Edit::AddExtensionRequest(_) | Edit::DecideExtension { .. } => EXTENSIONS,
            Edit::PutHazardArea(_) => HAZARD_AREAS,
            Edit::Rebaseline { .. } => REBASELINES,
            Edit::PutTask(_) => TASKS,
            Edit::PutTaskProgress(_) => TASK_PROGRESS,
            Edit::RecordRelease(_) => RELEASES,
            Edit::Approve(_) => APPROVALS,
            Edit::PutStockpileLine(_) => STOCKPILE,
            Edit::AddDestruction(_) => DESTRUCTIONS,
            Edit::PutVictimAssistance(_) => VICTIM_ASSISTANCE,
            Edit::PutNeed(_) => NEEDS,
            Edit::PutPledge(_) | Edit::AddDisbursement(_) | Edit::PutOffer(_) => match self {
                Edit::PutPledge(_) => PLEDGES,
                Edit::AddDisbursement(_) => DISBURSEMENTS,
                _ => OFFERS,
            },
            Edit::SetNarrative { .. } => NARRATIVE,
            Edit::AddComment(_) => COMMENTS,
        }
    }

    /// The document kind the edit writes to.
    pub fn doc_kind(&self) -> DocKind {
        match self {
            Edit::SetCoalition(_)
            | Edit::PutMember(_)
            | Edit::RemoveMember { .. }
            | Edit::AddExchangeRate(_) => DocKind::Manifest,
            Edit::PutPledge(_) | Edit::AddDisbursement(_) | Edit::PutOffer(_) => DocKind::Partner,
            Edit::RecordRelease(_) | Edit::PutTaskProgress(_) => DocKind::Operator,
            Edit::AddComment(_) => DocKind::Comments,
            _ => DocKind::Plan,
        }
    }
}

/// A coalition: its documents, keyed by id.
#[derive(Debug, Clone)]
pub struct Coalition {
    id: DocumentId,
    docs: BTreeMap<DocumentId, CoalitionDoc>,
}

/// Root key naming a document's kind (`manifest`, `plan`, `partner`, `operator`, `comments`).
pub const META_KIND: &str = "doc_kind";
/// Root key naming the organisation that owns a partner or operator document.
pub const META_OWNER: &str = "doc_owner";
/// Root key naming the coalition (its manifest document id) a document belongs to.
pub const META_COALITION: &str = "doc_coalition";

impl Coalition {
    /// Create a coalition on this device. The creator's organisation becomes a member with the
    /// coordinator role and the default role of its kind; the manifest, plan and comments
    /// documents are created.
    pub fn create(
        who: &Identity,
        info: CoalitionInfo,
        creator: Member,
        now: i64,
    ) -> Result<Coalition, EditError> {
        who.check()?;
        validate::coalition_info(&info)?;
        validate::member(&creator)?;
        if creator.org != who.org {
            return Err(EditError::invalid(
                "members",
                &creator.org,
                "org",
                format!("the creator's organisation is `{}`", who.org),
            ));
        }
        let manifest_id = DocumentId::new_random();
        let mut coalition = Coalition {
            id: manifest_id,
            docs: BTreeMap::new(),
        };
        coalition.new_doc(who, manifest_id, DocKind::Manifest, None)?;
        {
            let doc = &mut coalition.doc_mut(&manifest_id)?.doc;
            reconcile_prop(doc, ROOT, keys::COALITION, &info)?;
            let members = map_obj(doc, &ROOT, keys::MEMBERS)?;
            let mut creator = creator;
            creator
                .roles
                .insert(Role::Coordinator.as_str().into(), true);
            creator
                .roles
                .insert(creator.kind.default_role().as_str().into(), true);
            reconcile_prop(doc, &members, creator.org.as_str(), &creator)?;
        }
        for kind in [DocKind::Plan, DocKind::Comments] {
            let id = DocumentId::new_random();
            coalition.new_doc(who, id, kind, None)?;
            coalition.list_doc(&id, kind, None)?;
        }
        coalition.commit_doc(
            &manifest_id,
            now,
            CommitInfo::new(
                who,
                "create",
                keys::COALITION,
                manifest_id.to_string(),
                vec![],
            ),
        );
        coalition.commit_all(who, now);
        Ok(coalition)
    }

    /// Assemble a coalition from loaded documents. Documents that do not name this coalition at
    /// their root are refused.
    pub fn from_docs(
        id: DocumentId,
        docs: impl IntoIterator<Item = (DocumentId, AutoCommit)>,
    ) -> Result<Coalition, EditError> {
        let mut coalition = Coalition {
            id,
            docs: BTreeMap::new(),
        };
        for (doc_id, doc) in docs {
            coalition.insert_doc(doc_id, doc)?;
        }
        if !coalition.docs.contains_key(&coalition.id) {
            return Err(EditError::NotFound {
                what: "manifest document",
                id: coalition.id.to_string(),
            });
        }
        Ok(coalition)
    }

    /// Keep only the manifest and the documents it lists. A relay may hold documents that name
    /// the coalition but that no coordinator listed (pushed by a device, or not yet listed);
    /// they are not part of the plan until the manifest lists them, so every view of the
    /// coalition is the same on every device.
    pub fn retain_listed(&mut self) -> Result<(), EditError> {
        let listed = self.listed_docs()?;
        let manifest = self.id;
        self.docs
            .retain(|id, _| *id == manifest || listed.contains_key(&id.to_string()));
        Ok(())
    }

    /// Add or replace one document, reading its kind and owner from its root.
    pub fn insert_doc(&mut self, id: DocumentId, doc: AutoCommit) -> Result<(), EditError> {
        let (kind, owner, coalition) = describe(&doc)?;
        if coalition != self.id.to_string() {
            return Err(EditError::WrongCoalition {
                doc: id.to_string(),
                coalition,
            });
        }
        self.docs.insert(
            id,
            CoalitionDoc {
                id,
                kind,
                owner,
                doc,
            },
        );
        Ok(())
    }

    /// The coalition's id (its manifest document's id).
    pub fn id(&self) -> &DocumentId {
        &self.id
    }

    /// All documents.
    pub fn docs(&self) -> impl Iterator<Item = &CoalitionDoc> {
        self.docs.values()
    }

    /// All documents, mutably (for merging and sync).
    pub fn docs_mut(&mut self) -> impl Iterator<Item = &mut CoalitionDoc> {
        self.docs.values_mut()
    }

    /// One document.
    pub fn doc(&self, id: &DocumentId) -> Option<&CoalitionDoc> {
        self.docs.get(id)
    }

    fn doc_mut(&mut self, id: &DocumentId) -> Result<&mut CoalitionDoc, EditError> {
        self.docs.get_mut(id).ok_or_else(|| EditError::NotFound {
            what: "document",
            id: id.to_string(),
        })
    }

    /// The first document of a kind (and owner), if this device has it.
    pub fn find_doc(&self, kind: DocKind, owner: Option<&str>) -> Option<&CoalitionDoc> {
        self.docs
            .values()
            .find(|d| d.kind == kind && d.owner.as_deref() == owner)
    }

    /// The manifest document.
    pub fn manifest(&self) -> &AutoCommit {
        // The constructors guarantee the manifest is present.
        &self.docs[&self.id].doc
    }

    /// The coalition's description.
    pub fn info(&self) -> Result<CoalitionInfo, EditError> {
        Ok(hydrate_prop(self.manifest(), ROOT, keys::COALITION)?)
    }

    /// The member organisations.
    pub fn members(&self) -> Result<BTreeMap<String, Member>, EditError> {
        read_collection(self.manifest(), keys::MEMBERS)
    }

    /// The documents the manifest lists.
    pub fn listed_docs(&self) -> Result<BTreeMap<String, DocEntry>, EditError> {
        read_collection(self.manifest(), keys::DOCUMENTS)
    }

    /// The roles an organisation holds.
    pub fn roles_of(&self, org: &str) -> Result<Vec<Role>, EditError> {
        Ok(self
            .members()?
            .get(org)
            .map(Member::role_set)
            .unwrap_or_default())
    }

    /// Apply one edit as `who`, at unix time `now` (seconds). Nothing is written if the author
    /// may not make it or it breaks a hard rule.
    pub fn apply(&mut self, who: &Identity, edit: Edit, now: i64) -> Result<Committed, EditError> {
        who.check()?;
        let roles = self.roles_of(&who.org)?;
        let kind = edit.doc_kind();
        let owner = match &edit {
            Edit::PutPledge(p) => Some(p.donor.clone()),
            Edit::AddDisbursement(_) | Edit::PutOffer(_) => Some(who.org.clone()),
            Edit::RecordRelease(e) => Some(e.operator.clone()),
            Edit::PutTaskProgress(_) => Some(who.org.clone()),
            _ => None,
        };
        access::check_write(who, &roles, kind, owner.as_deref(), edit.collection())?;
        let doc_id = self
            .find_doc(kind, owner.as_deref())
            .map(|d| d.id)
            .ok_or_else(|| EditError::NoDocument {
                kind,
                owner: owner.clone().unwrap_or_default(),
            })?;
        validate::edit(self, who, &edit)?;
        self.set_actor(who);

        let mut docs = vec![doc_id];
        let mut created = Vec::new();
        let (action, entity_id, fields) = {
            let result = self.write(&doc_id, who, &edit, now, &mut created);
            match result {
                Ok(r) => r,
                Err(e) => {
                    self.doc_mut(&doc_id)?.doc.rollback();
                    return Err(e);
                }
            }
        };
        let info = CommitInfo::new(who, action, edit.collection(), entity_id.clone(), fields);
        let hash = self.commit_doc(&doc_id, now, info);
        docs.extend(created);
        Ok(Committed {
            docs,
            entity_id,
            hash: hash.map(|h| h.to_string()),
        })
    }

    /// Write an edit's ops into its document, uncommitted. Returns the action, the entity id
    /// and the fields written.
    fn write(
        &mut self,
        doc_id: &DocumentId,
        who: &Identity,
        edit: &Edit,
        now: i64,
        created: &mut Vec<DocumentId>,
    ) -> Result<(&'static str, String, Vec<String>), EditError> {
        let collection = edit.collection();
        match edit {
            Edit::SetCoalition(info) => {
                let doc = &mut self.doc_mut(doc_id)?.doc;
                let before =
                    hydrate_prop::<_, CoalitionInfo, _, _>(&*doc, ROOT, keys::COALITION).ok();
                reconcile_prop(doc, ROOT, keys::COALITION, info)?;
                Ok((
                    "put",
                    self.id.to_string(),
                    changed_fields(before.as_ref(), info),
                ))
            }
            Edit::PutMember(member) => {
                let needs_doc = match member.kind {
                    OrgKind::Donor | OrgKind::Expertise => Some(DocKind::Partner),
                    OrgKind::Operator => Some(DocKind::Operator),
                    _ => None,
                };
                let fields = self.upsert(doc_id, collection, &member.org, member)?;
                if let Some(kind) = needs_doc {
                    if self.find_doc(kind, Some(&member.org)).is_none() {
                        let id = DocumentId::new_random();
                        self.new_doc(who, id, kind, Some(&member.org))?;
                        self.commit_doc(
                            &id,
                            now,
                            CommitInfo::new(who, "create", "document", id.to_string(), vec![]),
                        );
                        self.list_doc(&id, kind, Some(&member.org))?;
                        created.push(id);
                    }
                }
                Ok(("put", member.org.clone(), fields))
            }
            Edit::RemoveMember { org } => {
                let doc = &mut self.doc_mut(doc_id)?.doc;
                let members = map_obj(doc, &ROOT, keys::MEMBERS)?;
                doc.delete(&members, org.as_str())?;
                Ok(("remove", org.clone(), vec![]))
            }
            Edit::AddExchangeRate(rate) => self.insert_new(doc_id, collection, &rate.key(), rate),
            Edit::PutObligation(o) => {
                let fields = self.upsert(doc_id, collection, o.pillar.as_str(), o)?;
                Ok(("put", o.pillar.to_string(), fields))
            }
            Edit::AddExtensionRequest(r) => self.insert_new(doc_id, collection, &r.id, r),
            Edit::DecideExtension { id, status } => {
                let mut request: ExtensionRequest = self
                    .read_entity(doc_id, collection, id)?
                    .ok_or_else(|| EditError::NotFound {
                        what: "extension request",
                        id: id.clone(),
                    })?;
                request.status = *status;
                let mut fields = self.upsert(doc_id, collection, id, &request)?;
                if *status == ExtensionStatus::Granted {
                    let key = request.pillar.as_str();
                    let mut obligation: Obligation = self
                        .read_entity(doc_id, keys::OBLIGATIONS, key)?
                        .unwrap_or(Obligation {
                            pillar: request.pillar,
                            legal_deadline: None,
                            current_deadline: None,
                            completed_on: None,
                        });
                    obligation.current_deadline = Some(request.requested_deadline.clone());
                    self.upsert(doc_id, keys::OBLIGATIONS, key, &obligation)?;
                    fields.push("obligation.current_deadline".into());
                }
                Ok(("decide", id.clone(), fields))
            }
            Edit::PutHazardArea(a) => {
                let fields = self.upsert(doc_id, collection, &a.id, a)?;
                Ok(("put", a.id.clone(), fields))
            }
            Edit::Rebaseline {
                area_id,
                baseline_m2,
                date,
                reason,
            } => {
                let mut area: HazardArea = self
                    .read_entity(doc_id, keys::HAZARD_AREAS, area_id)?
                    .ok_or_else(|| EditError::NotFound {
                    what: "hazard area",
                    id: area_id.clone(),
                })?;
                let record = Rebaseline {
                    id: new_entity_id(),
                    area_id: area_id.clone(),
                    previous_m2: area.baseline_m2,
                    baseline_m2: *baseline_m2,
                    date: date.clone(),
                    reason: reason.clone(),
                };
                self.insert_new(doc_id, keys::REBASELINES, &record.id, &record)?;
                area.baseline_m2 = *baseline_m2;
                self.upsert(doc_id, keys::HAZARD_AREAS, area_id, &area)?;
                Ok(("rebaseline", area_id.clone(), vec!["baseline_m2".into()]))
            }
            Edit::PutTask(t) => {
                let fields = self.upsert(doc_id, collection, &t.id, t)?;
                Ok(("put", t.id.clone(), fields))
            }
            Edit::PutTaskProgress(p) => {
                let fields = self.upsert(doc_id, collection, &p.task_id, p)?;
                Ok(("put", p.task_id.clone(), fields))
            }
            Edit::RecordRelease(e) => self.insert_new(doc_id, collection, &e.id, e),
            Edit::Approve(a) => {
                let fields = self.upsert(doc_id, collection, &a.entry_id, a)?;
                Ok(("approve", a.entry_id.clone(), fields))
            }
            Edit::PutStockpileLine(l) => {
                let fields = self.upsert(doc_id, collection, &l.id, l)?;
                Ok(("put", l.id.clone(), fields))
            }
            Edit::AddDestruction(e) => self.insert_new(doc_id, collection, &e.id, e),
            Edit::PutVictimAssistance(v) => {
                let fields = self.upsert(doc_id, collection, &v.year.to_string(), v)?;
                Ok(("put", v.year.to_string(), fields))
            }
            Edit::PutNeed(n) => {
                let fields = self.upsert(doc_id, collection, &n.id, n)?;
                Ok(("put", n.id.clone(), fields))
            }
            Edit::PutPledge(p) => {
                let fields = self.upsert(doc_id, collection, &p.id, p)?;
                Ok(("put", p.id.clone(), fields))
            }
            Edit::AddDisbursement(d) => self.insert_new(doc_id, collection, &d.id, d),
            Edit::PutOffer(o) => {
                let fields = self.upsert(doc_id, collection, &o.id, o)?;
                Ok(("put", o.id.clone(), fields))
            }
            Edit::SetNarrative { section, text } => {
                let doc = &mut self.doc_mut(doc_id)?.doc;
                let narrative = map_obj(doc, &ROOT, keys::NARRATIVE)?;
                let obj = match doc.get(&narrative, section.as_str())? {
                    Some((automerge::Value::Object(ObjType::Text), obj)) => obj,
                    _ => doc.put_object(&narrative, section.as_str(), ObjType::Text)?,
                };
                doc.update_text(&obj, text)?;
                Ok(("edit", section.to_string(), vec!["text".into()]))
            }
            Edit::AddComment(c) => self.insert_new(doc_id, collection, &c.id, c),
        }
    }

    /// Write an entity at `collection/key`, returning the top-level fields that changed.
    fn upsert<T>(
        &mut self,
        doc_id: &DocumentId,
        collection: &str,
        key: &str,
        value: &T,
    ) -> Result<Vec<String>, EditError>
    where
        T: Reconcile + DeserializeOwned + Serialize,
    {
        let before: Option<T> = self.read_entity(doc_id, collection, key)?;
        let doc = &mut self.doc_mut(doc_id)?.doc;
        let obj = map_obj(doc, &ROOT, collection)?;
        if is_record(collection) {
            // A record is replaced whole: last writer wins on the whole value.
            doc.put(&obj, key, record_json(value)?)?;
        } else {
            reconcile_prop(doc, &obj, key, value)?;
        }
        Ok(changed_fields(before.as_ref(), value))
    }

    /// Write an append-only record; its key must be new.
    fn insert_new<T>(
        &mut self,
        doc_id: &DocumentId,
        collection: &str,
        key: &str,
        value: &T,
    ) -> Result<(&'static str, String, Vec<String>), EditError>
    where
        T: Reconcile + Serialize,
    {
        let doc = &mut self.doc_mut(doc_id)?.doc;
        let obj = map_obj(doc, &ROOT, collection)?;
        if doc.get(&obj, key)?.is_some() {
            return Err(EditError::Immutable {
                collection: collection.to_string(),
                id: key.to_string(),
            });
        }
        if is_record(collection) {
            doc.put(&obj, key, record_json(value)?)?;
        } else {
            reconcile_prop(doc, &obj, key, value)?;
        }
        Ok(("record", key.to_string(), changed_fields::<T>(None, value)))
    }

    /// Read one entity of a document's collection.
    pub fn read_entity<T: DeserializeOwned>(
        &self,
        doc_id: &DocumentId,
        collection: &str,
        key: &str,
    ) -> Result<Option<T>, EditError> {
        let doc = &self
            .docs
            .get(doc_id)
            .ok_or_else(|| EditError::NotFound {
                what: "document",
                id: doc_id.to_string(),
            })?
            .doc;
        let Some((_, obj)) = doc.get(ROOT, collection)? else {
            return Ok(None);
        };
        let Some((value, id)) = doc.get(&obj, key)? else {
            return Ok(None);
        };
        let json = match value {
            automerge::Value::Object(_) => json_of(&doc.hydrate(&id, None)?),
            automerge::Value::Scalar(s) => {
                json_of(&automerge::hydrate::Value::Scalar(s.into_owned()))
            }
        };
        decode(collection, key, json).map(Some)
    }

    /// One entity, looked up by id in every document of a kind.
    pub fn find_entity<T: DeserializeOwned>(
        &self,
        kind: DocKind,
        collection: &str,
        key: &str,
    ) -> Result<Option<T>, EditError> {
        for d in self.docs.values().filter(|d| d.kind == kind) {
            if let Some(found) = self.read_entity(&d.id, collection, key)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Every entity of a collection across all documents of a kind, keyed by id.
    pub fn collection<T: DeserializeOwned>(
        &self,
        kind: DocKind,
        collection: &str,
    ) -> Result<BTreeMap<String, T>, EditError> {
        let mut all = BTreeMap::new();
        for d in self.docs.values().filter(|d| d.kind == kind) {
            all.extend(read_collection::<T>(&d.doc, collection)?);
        }
        Ok(all)
    }

    /// Create an empty document that describes itself, and hold it.
    fn new_doc(
        &mut self,
        who: &Identity,
        id: DocumentId,
        kind: DocKind,
        owner: Option<&str>,
    ) -> Result<(), EditError> {
        let mut doc = AutoCommit::new().with_actor(who.actor_id());
        doc.put(ROOT, META_KIND, kind.as_str())?;
        doc.put(ROOT, META_COALITION, self.id.to_string())?;
        if let Some(owner) = owner {
            doc.put(ROOT, META_OWNER, owner)?;
        }
        for collection in collections(kind) {
            doc.put_object(ROOT, *collection, ObjType::Map)?;
        }
        self.docs.insert(
            id,
            CoalitionDoc {
                id,
                kind,
                owner: owner.map(str::to_string),
                doc,
            },
        );
        Ok(())
    }

    /// List a document in the manifest.
    fn list_doc(
        &mut self,
        id: &DocumentId,
        kind: DocKind,
        owner: Option<&str>,
    ) -> Result<(), EditError> {
        let manifest_id = self.id;
        let doc = &mut self.doc_mut(&manifest_id)?.doc;
        let listed = map_obj(doc, &ROOT, keys::DOCUMENTS)?;
        reconcile_prop(
            doc,
            &listed,
            id.to_string().as_str(),
            DocEntry {
                kind,
                owner: owner.map(str::to_string),
            },
        )?;
        Ok(())
    }

    /// Commit a document's pending writes with the author and a real timestamp. The actor must
    /// already be the author's (see [`Coalition::set_actor`]): setting it would close the
    /// open transaction without them.
    fn commit_doc(&mut self, id: &DocumentId, now: i64, info: CommitInfo) -> Option<ChangeHash> {
        let d = self.docs.get_mut(id)?;
        let message = serde_json::to_string(&info).unwrap_or_default();
        d.doc.commit_with(
            CommitOptions::default()
                .with_message(message)
                .with_time(now),
        )
    }

    /// Commit pending writes of every document (those of `create`, which span several).
    pub fn commit_all(&mut self, who: &Identity, now: i64) -> Vec<DocumentId> {
        let ids: Vec<DocumentId> = self.docs.keys().cloned().collect();
        let mut written = Vec::new();
        for id in ids {
            let info = CommitInfo::new(who, "create", "document", id.to_string(), vec![]);
            if self.commit_doc(&id, now, info).is_some() {
                written.push(id);
            }
        }
        written
    }

    /// Merge another copy of the same coalition into this one. Documents this copy lacks are
    /// added. Returns the ids of documents that changed.
    pub fn merge(&mut self, other: &mut Coalition) -> Result<Vec<DocumentId>, EditError> {
        if other.id != self.id {
            return Err(EditError::WrongCoalition {
                doc: other.id.to_string(),
                coalition: self.id.to_string(),
            });
        }
        let mut changed = Vec::new();
        for (id, theirs) in other.docs.iter_mut() {
            match self.docs.get_mut(id) {
                Some(ours) => {
                    let before = ours.doc.get_heads();
                    ours.doc.merge(&mut theirs.doc)?;
                    if ours.doc.get_heads() != before {
                        changed.push(*id);
                    }
                }
                None => {
                    self.docs.insert(*id, theirs.clone());
                    changed.push(*id);
                }
            }
        }
        Ok(changed)
    }

    /// Set the device's actor on every document so that later edits are attributed to it.
    pub fn set_actor(&mut self, who: &Identity) {
        let actor = who.actor_id();
        for d in self.docs.values_mut() {
            // Setting the actor closes any open transaction: only do it when it changes.
            if d.doc.get_actor() != &actor {
                d.doc.set_actor(actor.clone());
            }
        }
    }

    /// This coalition as it was at unix time `at`: every document cut back to the changes
    /// committed at or before then (and their dependencies).
    pub fn at_time(&mut self, at: i64) -> Result<Coalition, EditError> {
        let mut docs = BTreeMap::new();
        for (id, d) in self.docs.iter_mut() {
            let heads = heads_at(&mut d.doc, at);
            if heads.is_empty() {
                continue;
            }
            let forked = d.doc.fork_at(&heads)?;
            docs.insert(
                *id,
                CoalitionDoc {
                    id: *id,
                    kind: d.kind,
                    owner: d.owner.clone(),
                    doc: forked,
                },
            );
        }
        if !docs.contains_key(&self.id) {
            return Err(EditError::NotYetCreated { at });
        }
        Ok(Coalition { id: self.id, docs })
    }
}

impl CommitInfo {
    fn new(
        who: &Identity,
        action: &str,
        entity: &str,
        id: String,
        fields: Vec<String>,
    ) -> CommitInfo {
        CommitInfo {
            org: who.org.clone(),
            user: who.user.clone(),
            device: who.device.clone(),
            action: action.to_string(),
            entity: entity.to_string(),
            id,
            fields,
        }
    }
}

/// The heads of the part of a document committed at or before `at`: changes after `at` are
/// dropped together with everything that depends on them.
fn heads_at(doc: &mut AutoCommit, at: i64) -> Vec<ChangeHash> {
    let changes = doc.get_changes_meta(&[]);
    let mut kept: std::collections::HashSet<ChangeHash> = std::collections::HashSet::new();
    // get_changes returns changes in causal order, so dependencies are decided first.
    for c in &changes {
        if c.timestamp <= at && c.deps.iter().all(|d| kept.contains(d)) {
            kept.insert(c.hash);
        }
    }
    let mut is_dep: std::collections::HashSet<ChangeHash> = std::collections::HashSet::new();
    for c in changes.iter().filter(|c| kept.contains(&c.hash)) {
        is_dep.extend(c.deps.iter().copied());
    }
    let mut heads: Vec<ChangeHash> = kept.into_iter().filter(|h| !is_dep.contains(h)).collect();
    heads.sort();
    heads
}

/// Read the kind, owner and coalition a document names at its root.
pub fn describe(doc: &AutoCommit) -> Result<(DocKind, Option<String>, String), EditError> {
    // JavaScript clients write plain strings as text objects unless they use ImmutableString:
    // accept both.
    let text = |key: &str| -> Option<String> {
        match doc.get(ROOT, key).ok().flatten()? {
            (automerge::Value::Scalar(s), _) => s.as_str().map(str::to_string),
            (automerge::Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
            _ => None,
        }
    };
    let kind: DocKind = text(META_KIND)
        .and_then(|k| k.parse().ok())
        .ok_or(EditError::NotACoalitionDocument)?;
    let coalition = text(META_COALITION).ok_or(EditError::NotACoalitionDocument)?;
    Ok((kind, text(META_OWNER), coalition))
}

/// The map at `parent/key`, created if missing.
fn map_obj(doc: &mut AutoCommit, parent: &ObjId, key: &str) -> Result<ObjId, EditError> {
    match doc.get(parent, key)? {
        Some((automerge::Value::Object(ObjType::Map), obj)) => Ok(obj),
        _ => Ok(doc.put_object(parent, key, ObjType::Map)?),
    }
}

/// Every entity of one collection of one document.
pub fn read_collection<T: DeserializeOwned>(
    doc: &AutoCommit,
    collection: &str,
) -> Result<BTreeMap<String, T>, EditError> {
    // One `hydrate` of the whole collection walks the op set once; reading entity by entity
    // costs a lookup per field, five times slower on a plan with thousands of entries.
    let Some((automerge::Value::Object(ObjType::Map), obj)) = doc.get(ROOT, collection)? else {
        return Ok(BTreeMap::new());
    };
    let automerge::hydrate::Value::Map(map) = doc.hydrate(&obj, None)? else {
        return Ok(BTreeMap::new());
    };
    map.iter()
        .map(|(key, v)| Ok((key.clone(), decode(collection, key, json_of(&v.value))?)))
        .collect()
}

/// An entity from its JSON form: a map's fields, or a record's JSON string.
fn decode<T: DeserializeOwned>(
    collection: &str,
    key: &str,
    json: serde_json::Value,
) -> Result<T, EditError> {
    let at = || format!("{collection}/{key}");
    match json {
        serde_json::Value::String(text) if is_record(collection) => {
            serde_json::from_str(&text).map_err(|source| EditError::Decode { at: at(), source })
        }
        other => {
            serde_json::from_value(other).map_err(|source| EditError::Decode { at: at(), source })
        }
    }
}

/// A record as the JSON string it is kept as.
fn record_json<T: Serialize>(value: &T) -> Result<String, EditError> {
    serde_json::to_string(value).map_err(|source| EditError::Decode {
        at: "record".into(),
        source,
    })
}

/// A hydrated Automerge value as JSON. Integral floats become integers: JavaScript peers
/// write every number as a float.
pub fn json_of(value: &automerge::hydrate::Value) -> serde_json::Value {
    use automerge::hydrate::Value as H;
    use automerge::ScalarValue as S;
    match value {
        H::Scalar(s) => match s {
            S::Str(s) => serde_json::Value::from(s.to_string()),
            S::Int(i) | S::Timestamp(i) => serde_json::Value::from(*i),
            S::Uint(u) => serde_json::Value::from(*u),
            S::F64(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => serde_json::Value::from(*f as i64),
            S::F64(f) => serde_json::Value::from(*f),
            S::Counter(c) => serde_json::Value::from(i64::from(c)),
            S::Boolean(b) => serde_json::Value::from(*b),
            S::Null => serde_json::Value::Null,
            S::Bytes(b) => serde_json::Value::from(b.clone()),
            other => serde_json::Value::from(other.to_string()),
        },
        H::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), json_of(&v.value)))
                .collect(),
        ),
        H::List(l) => serde_json::Value::Array(l.iter().map(|v| json_of(&v.value)).collect()),
        H::Text(t) => serde_json::Value::from(t.to_string()),
    }
}

/// The top-level fields of `after` that differ from `before` (all of them for a new entity).
fn changed_fields<T: Serialize>(before: Option<&T>, after: &T) -> Vec<String> {
    let after = serde_json::to_value(after).unwrap_or_default();
    let before = before.and_then(|b| serde_json::to_value(b).ok());
    let Some(after) = after.as_object() else {
        return vec![];
    };
    after
        .iter()
        .filter(|(k, v)| before.as_ref().and_then(|b| b.get(k.as_str())) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_describes_itself_with_scalar_or_text_keys() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, META_KIND, "comments").expect("put");
        let coalition = doc
            .put_object(ROOT, META_COALITION, ObjType::Text)
            .expect("text");
        doc.splice_text(&coalition, 0, 0, "2ApsD4zBFi2LrnTw96rsjAUnWRY4")
            .expect("splice");
        let (kind, owner, id) = describe(&doc).expect("describe");
        assert_eq!(
            (kind, owner, id.as_str()),
            (DocKind::Comments, None, "2ApsD4zBFi2LrnTw96rsjAUnWRY4")
        );
        doc.put(ROOT, META_KIND, "budget").expect("put");
        assert!(matches!(
            describe(&doc),
            Err(EditError::NotACoalitionDocument)
        ));
    }
}
