//! Conflicts: fields that devices wrote concurrently with different values.
//!
//! Automerge keeps every concurrent value of a map key and picks a winner deterministically;
//! the others are still there (`get_all`). A coordinator needs to see them all, with who wrote
//! each and when, and decide; writing the field again resolves the conflict.

use automerge::{ObjType, ReadDoc, Value, ROOT};
use serde::Serialize;

use crate::coalition::{Coalition, CommitInfo};
use crate::error::EditError;
use crate::model::{collections, is_record, keys, DocKind};

/// One concurrent value of a field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictValue {
    /// The value, as JSON.
    pub value: serde_json::Value,
    /// The author's organisation, if the change says.
    pub org: Option<String>,
    /// The author.
    pub user: Option<String>,
    /// The device.
    pub device: Option<String>,
    /// Unix time of the change, seconds.
    pub time: i64,
    /// The change hash.
    pub change: String,
}

/// A field with concurrent different values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    /// The document id.
    pub doc: String,
    /// The document kind.
    pub doc_kind: DocKind,
    /// The collection.
    pub collection: String,
    /// The entity id.
    pub id: String,
    /// The field.
    pub field: String,
    /// Every value, the one shown first.
    pub values: Vec<ConflictValue>,
}

/// Every conflicting value of every document of the coalition, in a stable order: whole
/// entities written concurrently under the same key (records such as approvals and exchange
/// rates, or an entity keyed by a natural key like an obligation's pillar), and single fields
/// of entities written field by field.
pub fn conflicts(coalition: &mut Coalition) -> Result<Vec<Conflict>, EditError> {
    let mut out = Vec::new();
    for d in coalition.docs_mut() {
        let doc_id = d.id.to_string();
        let kind = d.kind;
        let doc = &mut d.doc;
        // Narrative sections are text: concurrent edits merge character by character.
        for collection in collections(kind)
            .iter()
            .copied()
            .filter(|c| *c != keys::NARRATIVE)
        {
            let Some((Value::Object(ObjType::Map), coll)) = doc.get(ROOT, collection)? else {
                continue;
            };
            let ids: Vec<String> = doc.keys(&coll).collect();
            for id in ids {
                let mut found = |field: &str, values: Vec<ConflictValue>| {
                    out.push(Conflict {
                        doc: doc_id.clone(),
                        doc_kind: kind,
                        collection: collection.to_string(),
                        id: id.clone(),
                        field: field.to_string(),
                        values,
                    })
                };
                if let Some(values) = concurrent_values(doc, &coll, &id, is_record(collection))? {
                    found(WHOLE_ENTITY, values);
                }
                let Some((Value::Object(ObjType::Map), entity)) = doc.get(&coll, id.as_str())?
                else {
                    continue;
                };
                let fields: Vec<String> = doc.keys(&entity).collect();
                for field in fields {
                    if let Some(values) = concurrent_values(doc, &entity, &field, false)? {
                        found(&field, values);
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.collection, &a.id, &a.field).cmp(&(&b.collection, &b.id, &b.field)));
    Ok(out)
}

/// The field name of a conflict on a whole entity.
pub const WHOLE_ENTITY: &str = "*";

/// The values written concurrently at `obj/prop`, if there are several that differ, each with
/// its author and time. Records (JSON strings) are shown parsed.
fn concurrent_values(
    doc: &mut automerge::AutoCommit,
    obj: &automerge::ObjId,
    prop: &str,
    record: bool,
) -> Result<Option<Vec<ConflictValue>>, EditError> {
    let all: Vec<(serde_json::Value, Option<automerge::ChangeHash>)> = {
        let all = doc.get_all(obj, prop)?;
        if all.len() < 2 {
            return Ok(None);
        }
        all.iter()
            .map(|(v, opid)| {
                let mut json = value_json(doc, v, opid)?;
                if let (true, serde_json::Value::String(text)) = (record, &json) {
                    json = serde_json::from_str(text).unwrap_or(json);
                }
                Ok((json, doc.hash_for_opid(opid)))
            })
            .collect::<Result<_, EditError>>()?
    };
    if all.iter().all(|(v, _)| *v == all[0].0) {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(all.len());
    for (json, hash) in all {
        let meta = hash.and_then(|h| doc.get_change_meta_by_hash(&h));
        let info = meta
            .as_ref()
            .and_then(|m| CommitInfo::parse(m.message.as_deref()));
        values.push(ConflictValue {
            value: json,
            org: info.as_ref().map(|i| i.org.clone()),
            user: info.as_ref().map(|i| i.user.clone()),
            device: info.as_ref().map(|i| i.device.clone()),
            time: meta.as_ref().map(|m| m.timestamp).unwrap_or(0),
            change: hash.map(|h| h.to_string()).unwrap_or_default(),
        });
    }
    Ok(Some(values))
}

fn value_json(
    doc: &automerge::AutoCommit,
    value: &Value<'_>,
    obj: &automerge::ObjId,
) -> Result<serde_json::Value, EditError> {
    Ok(match value {
        Value::Scalar(s) => scalar_json(s.as_ref()),
        Value::Object(ObjType::Text) => serde_json::Value::from(doc.text(obj)?),
        Value::Object(ObjType::Map) | Value::Object(ObjType::Table) => {
            let mut map = serde_json::Map::new();
            for key in doc.keys(obj).collect::<Vec<_>>() {
                if let Some((v, child)) = doc.get(obj, key.as_str())? {
                    map.insert(key, value_json(doc, &v, &child)?);
                }
            }
            serde_json::Value::Object(map)
        }
        Value::Object(ObjType::List) => {
            let mut list = Vec::new();
            for i in 0..doc.length(obj) {
                if let Some((v, child)) = doc.get(obj, i)? {
                    list.push(value_json(doc, &v, &child)?);
                }
            }
            serde_json::Value::Array(list)
        }
    })
}

fn scalar_json(s: &automerge::ScalarValue) -> serde_json::Value {
    use automerge::ScalarValue as S;
    match s {
        S::Str(s) => serde_json::Value::from(s.to_string()),
        S::Int(i) => serde_json::Value::from(*i),
        S::Uint(u) => serde_json::Value::from(*u),
        S::F64(f) => serde_json::Value::from(*f),
        S::Boolean(b) => serde_json::Value::from(*b),
        S::Null => serde_json::Value::Null,
        other => serde_json::Value::from(other.to_string()),
    }
}
