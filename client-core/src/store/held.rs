//! Changes kept aside: refused by a check and never applied, never deleted.
//!
//! On a relay these are the quarantine: changes whose author was not allowed to make them, or
//! that broke a hard rule, waiting for a coordinator to accept or discard them. On a device
//! they are the device's own changes the relay refused, taken out of the local copy so that
//! it can keep syncing, and listed by `coalition status`. Both keep the raw change, so an
//! accepted one is applied exactly as it was made.

use automerge::Change;
use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::{Store, StoreError};

/// Where a held change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldStatus {
    /// Waiting for a decision.
    Held,
    /// Applied to its document by a coordinator.
    Accepted,
    /// Kept for the record, never applied.
    Discarded,
}

impl HeldStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldStatus::Held => "held",
            HeldStatus::Accepted => "accepted",
            HeldStatus::Discarded => "discarded",
        }
    }

    fn parse(text: &str) -> Option<HeldStatus> {
        match text {
            "held" => Some(HeldStatus::Held),
            "accepted" => Some(HeldStatus::Accepted),
            "discarded" => Some(HeldStatus::Discarded),
            _ => None,
        }
    }
}

impl std::fmt::Display for HeldStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to keep aside.
#[derive(Debug, Clone)]
pub struct NewHeld {
    /// The document it was made to.
    pub doc_id: String,
    /// That document's coalition.
    pub coalition: String,
    /// The change.
    pub change: Change,
    /// Who made it, as far as known (`user (org), device …`).
    pub author: Option<String>,
    /// The device that sent it, when it came from a peer.
    pub sent_by: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// Unix time it was set aside.
    pub at: i64,
}

/// A change kept aside, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldChange {
    /// Its number in this store.
    pub id: i64,
    /// The document it was made to.
    pub doc_id: String,
    /// That document's coalition.
    pub coalition: String,
    /// The change hash, hex.
    pub hash: String,
    /// The change's actor, hex.
    pub actor: String,
    /// Who made it, as far as known.
    pub author: Option<String>,
    /// The device that sent it.
    pub sent_by: Option<String>,
    /// What the change says it does (its commit message), if anything.
    pub summary: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// Unix time it was set aside.
    pub held_at: i64,
    /// Where it stands.
    pub status: HeldStatus,
    /// Who decided, once decided.
    pub decided_by: Option<String>,
    /// When, once decided.
    pub decided_at: Option<i64>,
    /// The raw change bytes, hex, for export (left out of listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_hex: Option<String>,
}

const COLUMNS: &str = "id, doc_id, coalition_id, hash, actor, author, sent_by, summary, reason, \
                       held_at, status, decided_by, decided_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<HeldChange> {
    let status: String = row.get(10)?;
    Ok(HeldChange {
        id: row.get(0)?,
        doc_id: row.get(1)?,
        coalition: row.get(2)?,
        hash: row.get(3)?,
        actor: row.get(4)?,
        author: row.get(5)?,
        sent_by: row.get(6)?,
        summary: row.get(7)?,
        reason: row.get(8)?,
        held_at: row.get(9)?,
        // The column is CHECKed to the three names.
        status: HeldStatus::parse(&status).unwrap_or(HeldStatus::Held),
        decided_by: row.get(11)?,
        decided_at: row.get(12)?,
        change_hex: None,
    })
}

/// Insert held changes within a transaction; one already held for the same document is left
/// as it is (a peer may send a refused change again). Returns how many were new.
pub(super) fn insert(tx: &Transaction<'_>, held: &[NewHeld]) -> rusqlite::Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO held_changes (doc_id, coalition_id, hash, change, actor, author, sent_by,
                                   summary, reason, held_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (doc_id, hash) DO NOTHING",
    )?;
    let mut new = 0;
    for h in held {
        let mut change = h.change.clone();
        new += stmt.execute(params![
            h.doc_id,
            h.coalition,
            h.change.hash().to_string(),
            change.bytes().as_ref(),
            h.change.actor_id().to_hex_string(),
            h.author,
            h.sent_by,
            h.change.message(),
            h.reason,
            h.at,
        ])?;
    }
    Ok(new)
}

impl Store {
    /// Keep changes aside (in one transaction). Returns how many were not held already.
    pub fn hold(&mut self, held: &[NewHeld]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let new = insert(&tx, held).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(new)
    }

    /// Held changes, newest first: of one coalition or all, in one status or all.
    pub fn held_changes(
        &self,
        coalition: Option<&str>,
        status: Option<HeldStatus>,
    ) -> Result<Vec<HeldChange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM held_changes
                 WHERE (?1 IS NULL OR coalition_id = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY id DESC"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![coalition, status.map(HeldStatus::as_str)], from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// One held change, with its raw bytes.
    pub fn held_change(&self, id: i64) -> Result<Option<(HeldChange, Vec<u8>)>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS}, change FROM held_changes WHERE id = ?1"),
                [id],
                |row| {
                    let mut held = from_row(row)?;
                    let bytes: Vec<u8> = row.get(13)?;
                    held.change_hex = Some(hex_of(&bytes));
                    Ok((held, bytes))
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The held change of a document with this hash, still waiting for a decision.
    pub fn held_by_hash(
        &self,
        doc_id: &str,
        hash: &str,
    ) -> Result<Option<(HeldChange, Vec<u8>)>, StoreError> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM held_changes WHERE doc_id = ?1 AND hash = ?2 AND status = 'held'",
                params![doc_id, hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match id {
            Some(id) => self.held_change(id),
            None => Ok(None),
        }
    }

    /// Record a decision on a held change. Only a change still held can be decided; returns
    /// false if it was not (already decided, or no such change).
    pub fn decide_held(
        &mut self,
        id: i64,
        status: HeldStatus,
        by: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE held_changes SET status = ?2, decided_by = ?3, decided_at = ?4
                 WHERE id = ?1 AND status = 'held'",
                params![id, status.as_str(), by, at],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// How many changes are held (waiting for a decision), per coalition.
    pub fn held_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT coalition_id, COUNT(*) FROM held_changes WHERE status = 'held'
                 GROUP BY coalition_id ORDER BY coalition_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
