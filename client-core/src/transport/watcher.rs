//! Notices documents that other processes write to the store while a sync runs.
//!
//! `coalition sync --watch` keeps one process connected while people keep using `coalition`
//! to edit: each edit is another process writing to the same SQLite file. Chunk ids only grow
//! (`AUTOINCREMENT`), so the largest one is a cheap "something was written" marker; the
//! watcher then reads the chunks written since, which the session merges (re-reading its own
//! writes is harmless: Automerge ignores changes it already has).
//!
//! It uses its own read-only connection: the store's connection belongs to the session, and
//! a reader in WAL mode never blocks a writer.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::store::StoreError;
use crate::sync::DocumentId;

/// New chunks of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChunks {
    /// The document.
    pub doc_id: DocumentId,
    /// Its coalition, as the store records it.
    pub coalition: String,
    /// The chunks' bytes, concatenated in order (Automerge loads them in one call).
    pub bytes: Vec<u8>,
}

/// Watches one store file. See the [module documentation](self).
pub struct StoreWatcher {
    conn: Connection,
    path: PathBuf,
    last: i64,
}

impl std::fmt::Debug for StoreWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWatcher")
            .field("path", &self.path)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl StoreWatcher {
    /// Opens the database file read-only; what is in it now counts as seen.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let sql = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let mut watcher = StoreWatcher {
            conn,
            path: path.to_path_buf(),
            last: 0,
        };
        watcher.last = watcher.marker()?;
        Ok(watcher)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The largest chunk id: it grows with every write to the store.
    pub fn marker(&self) -> Result<i64, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM chunks", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?
            .flatten();
        Ok(max.unwrap_or(0))
    }

    /// The chunks written since the last call, grouped by document. Empty (after one cheap
    /// query) when nothing was written.
    pub fn changes(&mut self) -> Result<Vec<NewChunks>, StoreError> {
        let marker = self.marker()?;
        if marker <= self.last {
            // Compaction may delete the newest chunk; a smaller marker is not a change.
            return Ok(Vec::new());
        }
        let mut out: Vec<NewChunks> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT c.doc_id, d.coalition_id, c.data FROM chunks c
                     JOIN documents d ON d.doc_id = c.doc_id
                     WHERE c.id > ?1 AND c.id <= ?2 ORDER BY c.doc_id, c.id",
                )
                .map_err(|e| self.err(e))?;
            let mut rows = stmt.query([self.last, marker]).map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                let id: String = row.get(0).map_err(|e| self.err(e))?;
                let Ok(doc_id) = id.parse::<DocumentId>() else {
                    continue;
                };
                let coalition: String = row.get(1).map_err(|e| self.err(e))?;
                let data = row
                    .get_ref(2)
                    .map_err(|e| self.err(e))?
                    .as_blob()
                    .map_err(|e| self.err(e.into()))?;
                match out.last_mut() {
                    Some(last) if last.doc_id == doc_id => last.bytes.extend_from_slice(data),
                    _ => out.push(NewChunks {
                        doc_id,
                        coalition,
                        bytes: data.to_vec(),
                    }),
                }
            }
        }
        self.last = marker;
        Ok(out)
    }
}
