//! Export files: how two devices merge a coalition before there is a network.
//!
//! A file holds the full Automerge bytes of some or all of a coalition's documents, after a
//! short magic header and in a CBOR envelope. Importing merges each document into the local
//! copy; merging is idempotent, so files can be exchanged in any order, any number of times.

use std::collections::BTreeMap;

use automerge::AutoCommit;
use ciborium::value::Value;

use crate::coalition::{describe, Coalition};
use crate::error::EditError;
use crate::store::{Store, StoreError};
use crate::sync::DocumentId;

/// First bytes of every export file.
pub const MAGIC: &[u8] = b"COALITION-SYNC-EXPORT\n";
/// The envelope version written.
pub const VERSION: u64 = 1;
/// Largest file accepted.
pub const MAX_FILE_BYTES: usize = 256 * 1024 * 1024;

/// Why an export file could not be read or merged. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Not an export file.
    #[error("not a coalition export file (bad header)")]
    NotAnExport,
    /// Too large.
    #[error("export file is {0} bytes; the limit is {MAX_FILE_BYTES}")]
    TooLarge(usize),
    /// The envelope is damaged.
    #[error("export file is damaged: {0}")]
    Damaged(String),
    /// A newer envelope version.
    #[error("export file version {0} is newer than this software reads ({VERSION})")]
    TooNew(u64),
    /// A document inside does not load.
    #[error("document {doc} in the export file is damaged")]
    BadDocument {
        /// The document id.
        doc: String,
        /// The cause.
        #[source]
        source: automerge::AutomergeError,
    },
    /// The coalition is not consistent.
    #[error(transparent)]
    Model(#[from] EditError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Encode every document of a coalition.
pub fn encode(coalition: &mut Coalition) -> Vec<u8> {
    let docs: Vec<Value> = coalition
        .docs_mut()
        .map(|d| {
            Value::Map(vec![
                (Value::Text("id".into()), Value::Text(d.id.to_string())),
                (Value::Text("data".into()), Value::Bytes(d.doc.save())),
            ])
        })
        .collect();
    let envelope = Value::Map(vec![
        (
            Value::Text("version".into()),
            Value::Integer(VERSION.into()),
        ),
        (
            Value::Text("coalition".into()),
            Value::Text(coalition.id().to_string()),
        ),
        (Value::Text("docs".into()), Value::Array(docs)),
    ]);
    let mut out = MAGIC.to_vec();
    // Writing into a Vec cannot fail.
    let _ = ciborium::into_writer(&envelope, &mut out);
    out
}

/// The documents of an export file, decoded and loaded.
pub fn decode(bytes: &[u8]) -> Result<(DocumentId, Vec<(DocumentId, AutoCommit)>), ExportError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ExportError::TooLarge(bytes.len()));
    }
    let body = bytes.strip_prefix(MAGIC).ok_or(ExportError::NotAnExport)?;
    let envelope: Value =
        ciborium::from_reader(body).map_err(|e| ExportError::Damaged(e.to_string()))?;
    let fields = as_map(&envelope)?;
    let version = match fields.get("version") {
        Some(Value::Integer(i)) => {
            u64::try_from(*i).map_err(|_| ExportError::Damaged("bad version".into()))?
        }
        _ => return Err(ExportError::Damaged("missing version".into())),
    };
    if version > VERSION {
        return Err(ExportError::TooNew(version));
    }
    let coalition = match fields.get("coalition") {
        Some(Value::Text(t)) => t
            .parse::<DocumentId>()
            .map_err(|e| ExportError::Damaged(format!("coalition id: {e}")))?,
        _ => return Err(ExportError::Damaged("missing coalition id".into())),
    };
    let Some(Value::Array(docs)) = fields.get("docs") else {
        return Err(ExportError::Damaged("missing documents".into()));
    };
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let f = as_map(d)?;
        let (Some(Value::Text(id)), Some(Value::Bytes(data))) = (f.get("id"), f.get("data")) else {
            return Err(ExportError::Damaged("a document without id or data".into()));
        };
        let doc_id: DocumentId = id
            .parse()
            .map_err(|e| ExportError::Damaged(format!("document id {id}: {e}")))?;
        let doc = AutoCommit::load(data).map_err(|source| ExportError::BadDocument {
            doc: id.clone(),
            source,
        })?;
        let (_, _, named) = describe(&doc)?;
        if named != coalition.to_string() {
            return Err(EditError::WrongCoalition {
                doc: id.clone(),
                coalition: named,
            }
            .into());
        }
        out.push((doc_id, doc));
    }
    Ok((coalition, out))
}

fn as_map(v: &Value) -> Result<BTreeMap<&str, &Value>, ExportError> {
    let Value::Map(entries) = v else {
        return Err(ExportError::Damaged("expected a map".into()));
    };
    Ok(entries
        .iter()
        .filter_map(|(k, v)| k.as_text().map(|k| (k, v)))
        .collect())
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    /// The coalition.
    pub coalition: String,
    /// Documents in the file.
    pub documents: usize,
    /// Documents that changed here (new or with new changes).
    pub changed: usize,
    /// Whether the coalition was new on this device.
    pub new_coalition: bool,
}

/// Merge an export file into the store. Either every document is merged and saved in one
/// transaction, or nothing is.
pub fn import(store: &mut Store, bytes: &[u8]) -> Result<ImportSummary, ExportError> {
    let (id, docs) = decode(bytes)?;
    let count = docs.len();
    let existing = store.coalitions()?.iter().any(|c| c.id == id);
    let mut theirs = Coalition::from_docs(id, docs)?;
    if !existing {
        store.save_all(&mut theirs)?;
        return Ok(ImportSummary {
            coalition: id.to_string(),
            documents: count,
            changed: count,
            new_coalition: true,
        });
    }
    let mut ours = store.load(&id)?;
    let changed = ours.merge(&mut theirs)?;
    store.save(&mut ours, &changed)?;
    Ok(ImportSummary {
        coalition: id.to_string(),
        documents: count,
        changed: changed.len(),
        new_coalition: false,
    })
}
