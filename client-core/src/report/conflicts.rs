//! Conflicts: fields that devices wrote concurrently with different values.
//!
//! Automerge keeps every concurrent value of a map key and picks a winner deterministically;
//! the others are still there (`get_all`). A coordinator needs to see them all, with who wrote
//! each and when, and decide; writing the field again resolves the conflict.

use automerge::{ObjType, ReadDoc, Value, ROOT};
use serde::Serialize;

use crate::coalition::{Coalition, CommitInfo};
use crate::error::EditError;
use crate::model::{collections, keys, DocKind};

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

/// Collections whose entities are written field by field (LWW) and can conflict. Append-only
/// collections are keyed by fresh ids and do not.
fn lww(collection: &str) -> bool {
    !matches!(
        collection,
        keys::RELEASES
            | keys::DISBURSEMENTS
            | keys::DESTRUCTIONS
            | keys::REBASELINES
            | keys::COMMENTS
            | keys::NARRATIVE
            | keys::DOCUMENTS
    )
}

/// Every conflicting field of every document of the coalition, in a stable order.
pub fn conflicts(coalition: &mut Coalition) -> Result<Vec<Conflict>, EditError> {
    let mut out = Vec::new();
    for d in coalition.docs_mut() {
        let doc_id = d.id.to_string();
        let kind = d.kind;
        let doc = &mut d.doc;
        for collection in collections(kind).iter().copied().filter(|c| lww(c)) {
            let Some((Value::Object(ObjType::Map), coll)) = doc.get(ROOT, collection)? else {
                continue;
            };
            let ids: Vec<String> = doc.keys(&coll).collect();
            for id in ids {
                let Some((Value::Object(ObjType::Map), entity)) = doc.get(&coll, id.as_str())?
                else {
                    continue;
                };
                let fields: Vec<String> = doc.keys(&entity).collect();
                for field in fields {
                    let all: Vec<(serde_json::Value, Option<automerge::ChangeHash>)> = {
                        let all = doc.get_all(&entity, field.as_str())?;
                        if all.len() < 2 {
                            continue;
                        }
                        all.iter()
                            .map(|(v, opid)| {
                                Ok((value_json(doc, v, opid)?, doc.hash_for_opid(opid)))
                            })
                            .collect::<Result<_, EditError>>()?
                    };
                    let mut values = Vec::new();
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
                    let first = &values[0].value;
                    if values.iter().all(|v| &v.value == first) {
                        continue;
                    }
                    out.push(Conflict {
                        doc: doc_id.clone(),
                        doc_kind: kind,
                        collection: collection.to_string(),
                        id: id.clone(),
                        field,
                        values,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.collection, &a.id, &a.field).cmp(&(&b.collection, &b.id, &b.field)));
    Ok(out)
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
