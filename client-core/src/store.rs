//! The local store: every coalition document on this device, in one SQLite database.
//!
//! A document is kept as a snapshot plus the incremental changes saved since; loading reads
//! all of a coalition's chunks in one query and hands each document's concatenated bytes to
//! Automerge in one `load` (change-by-change loading is two orders of magnitude slower).
//! Compaction folds the increments back into one snapshot, in one transaction.
//!
//! Durability: the database runs in WAL mode with `synchronous = FULL`, so a transaction that
//! returned is on disk. [`Store::save`] returns only after its transaction committed: an edit
//! is reported as saved only once it is durable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use automerge::{AutoCommit, ChangeHash};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::coalition::{Coalition, Identity};
use crate::error::EditError;
use crate::model::DocKind;
use crate::sync::DocumentId;

mod held;
pub use held::{HeldChange, HeldStatus, NewHeld};

/// Numbered schema migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_store.sql"),
    include_str!("../migrations/0002_held_changes.sql"),
    include_str!("../migrations/0003_usage.sql"),
];

/// Compact a document once it has this many incremental chunks.
pub const COMPACT_AFTER: i64 = 32;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (disk full, permissions, a locked or damaged database file).
    #[error("store database {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The store directory could not be created.
    #[error("cannot create store directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document's stored bytes do not load. The bytes are left untouched.
    #[error("document {doc} in the store does not load (left untouched)")]
    Corrupt {
        /// The document.
        doc: String,
        /// The cause.
        #[source]
        source: automerge::AutomergeError,
    },
    /// The store was written by a newer version of this software.
    #[error("the store has schema version {found}; this version of coalition knows up to {known}")]
    TooNew {
        /// The store's version.
        found: usize,
        /// The newest this build knows.
        known: usize,
    },
    /// No coalition with this id is on this device.
    #[error("no coalition {0} in this store")]
    UnknownCoalition(String),
    /// The stored documents do not form a coalition.
    #[error(transparent)]
    Model(#[from] EditError),
    /// Stored identity data is unreadable.
    #[error("stored identity is unreadable")]
    Identity(#[from] serde_json::Error),
}

/// The local store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The heads of each document as the database holds it, for the documents this store
    /// loaded or saved: the next save writes only the changes after them. A failed save
    /// leaves them as they were, so the next one writes those changes again.
    saved_heads: HashMap<DocumentId, Vec<ChangeHash>>,
    /// Chunks this store wrote since [`Store::external_writes`] last looked, so that it can
    /// tell them from chunks other processes wrote to the same database.
    own_chunks: std::collections::BTreeSet<i64>,
    /// The highest chunk id [`Store::external_writes`] has looked at.
    seen_chunk: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A document to save, with where it belongs.
pub struct DocRecord<'a> {
    /// Its id.
    pub id: DocumentId,
    /// Its coalition (manifest id).
    pub coalition: &'a str,
    /// Its kind.
    pub kind: DocKind,
    /// Its owner organisation.
    pub owner: Option<&'a str>,
    /// The document.
    pub doc: &'a mut AutoCommit,
}

/// What a batch adds to a person's stored documents and bytes (a relay's quotas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The person, `user (org)`.
    pub person: String,
    /// Documents created.
    pub documents: i64,
    /// Bytes of changes stored.
    pub bytes: i64,
}

/// A document loaded alone.
pub struct StoredDoc {
    /// Its id.
    pub id: DocumentId,
    /// Its coalition (manifest id).
    pub coalition: String,
    /// Its kind.
    pub kind: DocKind,
    /// Its owner organisation.
    pub owner: Option<String>,
    /// The document.
    pub doc: AutoCommit,
}

/// One document's bytes waiting to be written.
struct Pending {
    id: DocumentId,
    coalition: String,
    kind: &'static str,
    owner: Option<String>,
    data: Vec<u8>,
    heads: Vec<ChangeHash>,
}

/// A batch of writes encoded by [`Store::prepare_batch`], owning its bytes, for
/// [`Store::write_batches`].
pub struct PreparedBatch {
    docs: Vec<Pending>,
    states: Vec<(DocumentId, String, Vec<u8>)>,
    held: Vec<NewHeld>,
    usage: Vec<Usage>,
}

impl PreparedBatch {
    /// How many documents it saves.
    pub fn documents(&self) -> usize {
        self.docs.len()
    }
}

/// A coalition as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredCoalition {
    /// The coalition id (its manifest document).
    pub id: DocumentId,
    /// Number of documents on this device.
    pub documents: usize,
    /// Bytes stored for it.
    pub bytes: i64,
}

impl Store {
    /// Open (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("coalition.db");
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let mut store = Store {
            conn,
            path,
            saved_heads: HashMap::new(),
            own_chunks: Default::default(),
            seen_chunk: 0,
        };
        store.migrate()?;
        store.seen_chunk = store
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM chunks", [], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: usize = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map_err(|e| self.err(e))?
            .try_into()
            .unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite {
                path: self.path.clone(),
                source: e,
            })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(|e| StoreError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
        }
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This device's identity, once set up.
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Set this device's identity.
    pub fn set_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        let json = serde_json::to_string(identity)?;
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('identity', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The coalitions on this device.
    pub fn coalitions(&self) -> Result<Vec<StoredCoalition>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.coalition_id, COUNT(DISTINCT d.doc_id), COALESCE(SUM(LENGTH(c.data)), 0)
                 FROM documents d LEFT JOIN chunks c ON c.doc_id = d.doc_id
                 GROUP BY d.coalition_id ORDER BY d.coalition_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, documents, bytes) = row.map_err(|e| self.err(e))?;
            if let Ok(id) = id.parse() {
                out.push(StoredCoalition {
                    id,
                    documents: documents as usize,
                    bytes,
                });
            }
        }
        Ok(out)
    }

    /// Load a coalition: the manifest and every document it lists (one query, one Automerge
    /// `load` per document).
    pub fn load(&mut self, coalition: &DocumentId) -> Result<Coalition, StoreError> {
        let mut docs = self.load_docs(coalition)?;
        for (id, doc) in docs.iter_mut() {
            self.saved_heads.insert(*id, doc.get_heads());
        }
        if docs.is_empty() {
            return Err(StoreError::UnknownCoalition(coalition.to_string()));
        }
        let mut coalition = Coalition::from_docs(*coalition, docs)?;
        coalition.retain_listed()?;
        Ok(coalition)
    }

    /// The ids of the documents of a coalition that [`Self::load_docs`] would load, without
    /// loading them.
    pub fn doc_ids(&self, coalition: &DocumentId) -> Result<Vec<DocumentId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT c.doc_id FROM chunks c JOIN documents d ON d.doc_id = c.doc_id
                 WHERE d.coalition_id = ?1 ORDER BY c.doc_id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query([coalition.to_string()])
            .map_err(|e| self.err(e))?;
        let mut ids = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let id: String = row.get(0).map_err(|e| self.err(e))?;
            ids.push(id.parse().map_err(|_| StoreError::Corrupt {
                doc: id.clone(),
                source: automerge::AutomergeError::InvalidObjId(id.clone()),
            })?);
        }
        Ok(ids)
    }

    /// Load the documents of a coalition without assembling them.
    pub fn load_docs(
        &self,
        coalition: &DocumentId,
    ) -> Result<Vec<(DocumentId, AutoCommit)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.doc_id, c.data FROM chunks c JOIN documents d ON d.doc_id = c.doc_id
                 WHERE d.coalition_id = ?1 ORDER BY c.doc_id, c.id",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query([coalition.to_string()])
            .map_err(|e| self.err(e))?;
        let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let id: String = row.get(0).map_err(|e| self.err(e))?;
            let data = row
                .get_ref(1)
                .map_err(|e| self.err(e))?
                .as_blob()
                .map_err(|e| self.err(e.into()))?;
            bytes.entry(id).or_default().extend_from_slice(data);
        }
        let mut docs = Vec::with_capacity(bytes.len());
        for (id, data) in bytes {
            let doc = AutoCommit::load(&data).map_err(|source| StoreError::Corrupt {
                doc: id.clone(),
                source,
            })?;
            let id = id.parse().map_err(|_| StoreError::Corrupt {
                doc: id.clone(),
                source: automerge::AutomergeError::InvalidObjId(id.clone()),
            })?;
            docs.push((id, doc));
        }
        Ok(docs)
    }

    /// Persist the given documents of a coalition (their changes since the last save) in one
    /// transaction. Returns once the transaction is durable.
    pub fn save(
        &mut self,
        coalition: &mut Coalition,
        docs: &[DocumentId],
    ) -> Result<(), StoreError> {
        let coalition_id = coalition.id().to_string();
        let records = coalition
            .docs_mut()
            .filter(|d| docs.contains(&d.id))
            .map(|d| DocRecord {
                id: d.id,
                coalition: &coalition_id,
                kind: d.kind,
                owner: d.owner.as_deref(),
                doc: &mut d.doc,
            })
            .collect();
        self.save_docs(records)
    }

    /// Persist documents (of any coalitions) in one transaction: for each, the changes after
    /// the heads this store last loaded or saved, or the whole document if it has not seen it.
    /// Returns once the transaction is durable; on error nothing is written and the next save
    /// writes the same changes again.
    pub fn save_docs(&mut self, records: Vec<DocRecord<'_>>) -> Result<(), StoreError> {
        self.save_docs_and_sync_states(records, &[])
    }

    /// [`Store::save_docs`], and in the same transaction the sync states of peers (document,
    /// peer storage id, encoded state): a relay saves what a batch of messages changed and
    /// what it now knows of each peer with one fsync.
    pub fn save_docs_and_sync_states(
        &mut self,
        records: Vec<DocRecord<'_>>,
        states: &[(DocumentId, &str, &[u8])],
    ) -> Result<(), StoreError> {
        self.save_batch(records, states, &[], &[])
    }

    /// [`Store::save_docs_and_sync_states`], and in the same transaction changes kept aside
    /// (see [`NewHeld`]): a relay's batch stores what it applied and what it refused together.
    pub fn save_batch(
        &mut self,
        records: Vec<DocRecord<'_>>,
        states: &[(DocumentId, &str, &[u8])],
        held: &[NewHeld],
        usage: &[Usage],
    ) -> Result<(), StoreError> {
        let states = states
            .iter()
            .map(|(doc, peer, state)| (*doc, peer.to_string(), state.to_vec()))
            .collect();
        let batch = self.prepare_batch(records, states, held.to_vec(), usage.to_vec());
        let chunks = self.write_batches(&[&batch])?;
        self.own_writes(&chunks);
        self.assume_saved(&batch);
        Ok(())
    }

    /// Encode what [`Store::save_batch`] would write, without writing it: for each document the
    /// changes after the heads this store last saved (or assumed saved, see
    /// [`Store::assume_saved`]), or the whole document if it has not seen it. The result owns
    /// its bytes, so that another connection on another thread can write it
    /// ([`Store::write_batches`]) while this one goes on.
    pub fn prepare_batch(
        &mut self,
        records: Vec<DocRecord<'_>>,
        states: Vec<(DocumentId, String, Vec<u8>)>,
        held: Vec<NewHeld>,
        usage: Vec<Usage>,
    ) -> PreparedBatch {
        let mut docs: Vec<Pending> = Vec::with_capacity(records.len());
        for r in records {
            // A document this store has not seen is written whole; the chunks already in the
            // database for it (if any) stay, and loading merges both.
            let data = match self.saved_heads.get(&r.id) {
                Some(heads) => r.doc.save_after(heads),
                None => r.doc.save(),
            };
            docs.push(Pending {
                id: r.id,
                coalition: r.coalition.to_string(),
                kind: r.kind.as_str(),
                owner: r.owner.map(str::to_string),
                data,
                heads: r.doc.get_heads(),
            });
        }
        PreparedBatch {
            docs,
            states,
            held,
            usage,
        }
    }

    /// Take the documents of `batch` as saved up to its heads: the next
    /// [`Store::prepare_batch`] encodes only what came after. A relay that writes batches on
    /// another thread calls this as soon as it hands one over; if that write fails it must
    /// [`Store::forget`] the batch's documents (and fail every batch prepared after it).
    pub fn assume_saved(&mut self, batch: &PreparedBatch) {
        for p in &batch.docs {
            self.saved_heads.insert(p.id, p.heads.clone());
        }
    }

    /// Chunks written through another connection to this database (see
    /// [`Store::write_batches`]), so that [`Store::external_writes`] does not report them.
    pub fn own_writes(&mut self, chunks: &[i64]) {
        self.own_chunks
            .extend(chunks.iter().copied().filter(|c| *c > self.seen_chunk));
    }

    /// A second connection to the same database, for a thread that writes what this one
    /// prepares.
    pub fn reopen(&self) -> Result<Store, StoreError> {
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        Store::open(dir)
    }

    /// Load one document, with what the store knows of it.
    pub fn load_doc(&mut self, id: &DocumentId) -> Result<Option<StoredDoc>, StoreError> {
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT coalition_id, kind, owner FROM documents WHERE doc_id = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((coalition, kind, owner)) = row else {
            return Ok(None);
        };
        let mut data = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT data FROM chunks WHERE doc_id = ?1 ORDER BY id")
                .map_err(|e| self.err(e))?;
            let mut rows = stmt.query([id.to_string()]).map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                data.extend_from_slice(
                    row.get_ref(0)
                        .map_err(|e| self.err(e))?
                        .as_blob()
                        .map_err(|e| self.err(e.into()))?,
                );
            }
        }
        let mut doc = AutoCommit::load(&data).map_err(|source| StoreError::Corrupt {
            doc: id.to_string(),
            source,
        })?;
        self.saved_heads.insert(*id, doc.get_heads());
        let kind = kind.parse().map_err(|_| StoreError::Corrupt {
            doc: id.to_string(),
            source: automerge::AutomergeError::InvalidObjId(kind.clone()),
        })?;
        Ok(Some(StoredDoc {
            id: *id,
            coalition,
            kind,
            owner,
            doc,
        }))
    }

    /// What the store holds from a person: (documents created, bytes of changes).
    pub fn usage(&self, person: &str) -> Result<(i64, i64), StoreError> {
        self.conn
            .query_row(
                "SELECT documents, bytes FROM usage WHERE person = ?1",
                [person],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map(|u| u.unwrap_or((0, 0)))
            .map_err(|e| self.err(e))
    }

    /// Every stored document of a coalition (its manifest included) with its kind and owner,
    /// without loading them.
    pub fn doc_infos(
        &self,
        coalition: &DocumentId,
    ) -> Result<Vec<(DocumentId, DocKind, Option<String>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT doc_id, kind, owner FROM documents WHERE coalition_id = ?1 ORDER BY doc_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([coalition.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, owner) = row.map_err(|e| self.err(e))?;
            // Rows this version cannot read are left out: the manifest still lists them.
            if let (Ok(id), Ok(kind)) = (id.parse(), kind.parse()) {
                out.push((id, kind, owner));
            }
        }
        Ok(out)
    }

    /// The coalition, kind and owner of a stored document, without loading it.
    pub fn doc_info(
        &self,
        id: &DocumentId,
    ) -> Result<Option<(String, DocKind, Option<String>)>, StoreError> {
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .query_row(
                "SELECT coalition_id, kind, owner FROM documents WHERE doc_id = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.and_then(|(c, k, o)| k.parse().ok().map(|k| (c, k, o))))
    }

    /// Forget what this store saved of a document it no longer holds in memory (the next save
    /// of it, if any, writes it whole).
    pub fn forget(&mut self, id: &DocumentId) {
        self.saved_heads.remove(id);
    }

    /// A value of the device's settings (server URL, credential...).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Set a value of the device's settings.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Persist every document of a coalition.
    pub fn save_all(&mut self, coalition: &mut Coalition) -> Result<(), StoreError> {
        let ids: Vec<DocumentId> = coalition.docs().map(|d| d.id).collect();
        self.save(coalition, &ids)
    }

    /// Write prepared batches in one transaction (one fsync however many there are), in
    /// order. Returns the ids of the chunks written; on error nothing is written.
    pub fn write_batches(&mut self, batches: &[&PreparedBatch]) -> Result<Vec<i64>, StoreError> {
        let now = chrono::Utc::now().timestamp();
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut written = Vec::new();
        for batch in batches {
            for p in &batch.docs {
                let id = p.id.to_string();
                tx.prepare_cached(
                    "INSERT INTO documents (doc_id, coalition_id, kind, owner, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (doc_id) DO UPDATE SET updated_at = excluded.updated_at",
                )
                .and_then(|mut stmt| stmt.execute(params![id, p.coalition, p.kind, p.owner, now]))
                .map_err(sql)?;
                if !p.data.is_empty() {
                    tx.prepare_cached(
                        "INSERT INTO chunks (doc_id, snapshot, data) VALUES (?1, 0, ?2)",
                    )
                    .and_then(|mut stmt| stmt.execute(params![id, p.data]))
                    .map_err(sql)?;
                    written.push(tx.last_insert_rowid());
                }
            }
            for (doc, peer, state) in &batch.states {
                tx.prepare_cached(
                    "INSERT INTO sync_states (doc_id, peer, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (doc_id, peer) DO UPDATE SET state = excluded.state",
                )
                .and_then(|mut stmt| stmt.execute(params![doc.to_string(), peer, state]))
                .map_err(sql)?;
            }
            held::insert(&tx, &batch.held).map_err(sql)?;
            for u in &batch.usage {
                tx.prepare_cached(
                    "INSERT INTO usage (person, documents, bytes) VALUES (?1, ?2, ?3)
                     ON CONFLICT (person) DO UPDATE SET documents = documents + excluded.documents,
                                                        bytes = bytes + excluded.bytes",
                )
                .and_then(|mut stmt| stmt.execute(params![u.person, u.documents, u.bytes]))
                .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(written)
    }

    /// Replace a document's stored bytes with `record`'s whole document, forget every peer's
    /// sync state of it, and keep `held` aside, in one transaction. A device uses this when
    /// the relay refused some of its changes: the document goes back to what the relay
    /// accepts, and the refused changes stay in the store.
    pub fn replace_doc(
        &mut self,
        record: DocRecord<'_>,
        held: &[NewHeld],
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp();
        let id = record.id.to_string();
        let data = record.doc.save();
        let heads = record.doc.get_heads();
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.execute(
            "INSERT INTO documents (doc_id, coalition_id, kind, owner, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (doc_id) DO UPDATE SET updated_at = excluded.updated_at",
            params![id, record.coalition, record.kind.as_str(), record.owner, now],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM chunks WHERE doc_id = ?1", [&id])
            .map_err(sql)?;
        tx.execute(
            "INSERT INTO chunks (doc_id, snapshot, data) VALUES (?1, 1, ?2)",
            params![id, data],
        )
        .map_err(sql)?;
        let chunk = tx.last_insert_rowid();
        tx.execute("DELETE FROM sync_states WHERE doc_id = ?1", [&id])
            .map_err(sql)?;
        held::insert(&tx, held).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.own_chunks.insert(chunk);
        self.saved_heads.insert(record.id, heads);
        Ok(())
    }

    /// Fold the incremental chunks of every document that has at least `min_increments` of them
    /// into one snapshot. Each document is compacted in its own transaction: a crash leaves
    /// either the old chunks or the new snapshot. Returns the number of documents compacted.
    pub fn compact(&mut self, min_increments: i64) -> Result<usize, StoreError> {
        let candidates: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT doc_id FROM chunks WHERE snapshot = 0 GROUP BY doc_id HAVING COUNT(*) >= ?1")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([min_increments], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        for doc_id in &candidates {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let (ids, data) = {
                let mut stmt = tx
                    .prepare("SELECT id, data FROM chunks WHERE doc_id = ?1 ORDER BY id")
                    .map_err(sql)?;
                let mut rows = stmt.query([doc_id]).map_err(sql)?;
                let mut ids = Vec::new();
                let mut data = Vec::new();
                while let Some(row) = rows.next().map_err(sql)? {
                    ids.push(row.get::<_, i64>(0).map_err(sql)?);
                    data.extend_from_slice(
                        row.get_ref(1)
                            .map_err(sql)?
                            .as_blob()
                            .map_err(|e| sql(e.into()))?,
                    );
                }
                (ids, data)
            };
            let mut doc = AutoCommit::load(&data).map_err(|source| StoreError::Corrupt {
                doc: doc_id.clone(),
                source,
            })?;
            let snapshot = doc.save();
            let last = ids.last().copied().unwrap_or(0);
            tx.execute(
                "DELETE FROM chunks WHERE doc_id = ?1 AND id <= ?2",
                params![doc_id, last],
            )
            .map_err(sql)?;
            tx.execute(
                "INSERT INTO chunks (doc_id, snapshot, data) VALUES (?1, 1, ?2)",
                params![doc_id, snapshot],
            )
            .map_err(sql)?;
            let written = tx.last_insert_rowid();
            tx.commit().map_err(sql)?;
            self.own_chunks.insert(written);
        }
        Ok(candidates.len())
    }

    /// The documents that other processes (an admin command beside a running relay, a second
    /// `coalition` process on a device) wrote to this database since the last call. The caller
    /// reloads them with [`Store::load_doc`] and merges them into what it holds in memory.
    pub fn external_writes(&mut self) -> Result<Vec<DocumentId>, StoreError> {
        let rows: Vec<(i64, String)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, doc_id FROM chunks WHERE id > ?1 ORDER BY id")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([self.seen_chunk], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut docs = Vec::new();
        for (id, doc) in rows {
            self.seen_chunk = self.seen_chunk.max(id);
            if self.own_chunks.contains(&id) {
                continue;
            }
            if let Ok(doc) = doc.parse::<DocumentId>() {
                if !docs.contains(&doc) {
                    docs.push(doc);
                }
            }
        }
        let seen = self.seen_chunk;
        self.own_chunks.retain(|id| *id > seen);
        Ok(docs)
    }

    /// Compact what has grown and close the database.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.compact(COMPACT_AFTER)?;
        self.conn.close().map_err(|(_, source)| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// The persisted sync state for a document and a peer's storage id.
    pub fn sync_state(&self, doc: &DocumentId, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row(
                "SELECT state FROM sync_states WHERE doc_id = ?1 AND peer = ?2",
                params![doc.to_string(), peer],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Persist a sync state for a document and a peer's storage id.
    pub fn put_sync_state(
        &self,
        doc: &DocumentId,
        peer: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO sync_states (doc_id, peer, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT (doc_id, peer) DO UPDATE SET state = excluded.state",
                params![doc.to_string(), peer, state],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Bytes stored for one coalition (snapshots and increments).
    pub fn coalition_bytes(&self, coalition: &DocumentId) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(c.data)), 0) FROM chunks c JOIN documents d ON d.doc_id = c.doc_id
                 WHERE d.coalition_id = ?1",
                [coalition.to_string()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;

    #[test]
    fn doc_ids_are_the_documents_load_docs_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let mut f = fixture();
        store.save_all(&mut f.c).expect("save");
        let loaded: Vec<DocumentId> = store
            .load_docs(f.c.id())
            .expect("load")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert!(loaded.len() > 1, "{loaded:?}");
        assert_eq!(store.doc_ids(f.c.id()).expect("ids"), loaded);
        assert!(store
            .doc_ids(&DocumentId::new_random())
            .expect("ids")
            .is_empty());
    }

    #[test]
    fn writes_by_another_process_are_reported_and_own_writes_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut relay = Store::open(dir.path()).expect("open");
        let mut admin = Store::open(dir.path()).expect("open");
        let mut f = fixture();
        relay.save_all(&mut f.c).expect("save");
        assert_eq!(
            relay.external_writes().expect("look"),
            vec![],
            "own writes are not external"
        );
        let mut c = admin.load(f.c.id()).expect("load");
        let coord = f.coordinator.clone();
        let rate = crate::model::ExchangeRate {
            currency: "EUR".into(),
            date: "2021-01-01".into(),
            usd_per_unit: 1.2,
            source: "x".into(),
        };
        let done = c
            .apply(
                &coord,
                crate::Edit::AddExchangeRate(rate),
                crate::fixture::T0,
            )
            .expect("edit");
        admin.save(&mut c, &done.docs).expect("save");
        assert_eq!(relay.external_writes().expect("look"), vec![*f.c.id()]);
        assert_eq!(
            relay.external_writes().expect("look"),
            vec![],
            "reported once"
        );
    }
}
