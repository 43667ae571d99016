//! Enrollment and authentication: the relay's `auth.db`.
//!
//! A coordinator creates an invite for a person of an organisation with a role in one
//! coalition; the invite's code is shown once and kept only as its SHA-256. Enrollment trades
//! the code (once, before it expires) for a device credential: 256 random bits, also kept only
//! as a SHA-256 (a fast hash is enough for secrets that cannot be guessed; a slow password hash
//! would only cost time on every connection). The credential never expires; revocation is
//! explicit.
//!
//! The database is plain SQLite and blocking: callers on async runtimes run these methods on
//! a blocking thread.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coalition_core::sync::DocumentId;
use coalition_core::Identity;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Numbered schema migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_auth.sql"),
    include_str!("../migrations/0002_actor_policy.sql"),
];

/// The file name of the auth database inside the data directory.
pub const AUTH_DB: &str = "auth.db";

/// Why an auth operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// SQLite failed.
    #[error("auth database {path}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer version of this software.
    #[error("auth database has schema version {found}; this relay knows up to {known}")]
    TooNew {
        /// The database's version.
        found: usize,
        /// The newest this build knows.
        known: usize,
    },
    /// No invite has this code.
    #[error("this invite code is not valid")]
    InvalidInvite,
    /// The invite was already used to enroll a device.
    #[error("this invite was already used")]
    InviteUsed,
    /// The invite expired.
    #[error("this invite expired")]
    InviteExpired,
    /// The credential is unknown.
    #[error("unknown credential")]
    Unauthorized,
    /// The device was revoked.
    #[error("this device was revoked")]
    DeviceRevoked,
    /// The actor id is already bound to another device.
    #[error("actor {0} is already registered to another device")]
    ActorTaken(String),
    /// A request field is not acceptable.
    #[error("{0}")]
    BadRequest(String),
    /// No such device or coalition.
    #[error("{what} {id} not found")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A stored relay identity is unreadable.
    #[error("stored relay identity is unreadable")]
    Identity(#[from] serde_json::Error),
}

/// A device as the relay knows it after checking its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    /// The device id.
    pub device_id: String,
    /// The person.
    pub user: String,
    /// The person's organisation.
    pub org: String,
    /// The role the person was invited with.
    pub role: String,
    /// The coalitions (manifest ids) the device belongs to.
    pub coalitions: BTreeSet<DocumentId>,
}

/// The device an actor is bound to, and what the relay needs to judge its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorOwner {
    /// The device.
    pub device_id: String,
    /// Its person.
    pub user: String,
    /// Its organisation.
    pub org: String,
    /// Whether the device was revoked.
    pub revoked: bool,
    /// Whether the device binds actors first seen on its connections.
    pub binds_seen_actors: bool,
}

/// What an enrollment gives the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrolled {
    /// The long-lived credential (shown once).
    pub credential: String,
    /// The new device's id.
    pub device_id: String,
    /// The person.
    pub user: String,
    /// The organisation.
    pub org: String,
    /// The role.
    pub role: String,
    /// The coalitions the device may sync (manifest ids).
    pub coalitions: Vec<String>,
}

/// An invite waiting to be used, as shown when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvite {
    /// The code to hand to the person (shown once, stored hashed).
    pub code: String,
    /// Unix time it expires.
    pub expires_at: i64,
}

/// What an invite is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteSpec {
    /// The coalition (manifest id).
    pub coalition: DocumentId,
    /// The person.
    pub user: String,
    /// The organisation.
    pub org: String,
    /// The role.
    pub role: String,
}

/// One row of `admin devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// The device id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The person.
    pub user: String,
    /// The organisation.
    pub org: String,
    /// The role.
    pub role: String,
    /// The coalitions it belongs to.
    pub coalitions: Vec<String>,
    /// Unix time of enrollment.
    pub enrolled_at: i64,
    /// Unix time of the last authenticated request or connection.
    pub last_seen_at: Option<i64>,
    /// Unix time of revocation.
    pub revoked_at: Option<i64>,
    /// The actors bound to it.
    pub actors: Vec<String>,
}

/// An invite as stored.
struct InviteRow {
    coalition: String,
    person: i64,
    role: String,
    expires_at: i64,
    used_at: Option<i64>,
    user: String,
    org: String,
}

/// The auth database.
pub struct AuthDb {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for AuthDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a secret, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A random secret of `bytes` bytes, hex, after a prefix that tells people what it is.
fn random_secret(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    format!("{prefix}{}", hex::encode(buf))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// True for 32 hex digits (16 bytes), the form of an automerge actor id a device registers.
fn is_actor_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl AuthDb {
    /// Open (creating if needed) `auth.db` in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<AuthDb, AuthError> {
        let dir = dir.as_ref();
        let path = dir.join(AUTH_DB);
        let sql = |source| AuthError::Sqlite {
            path: path.clone(),
            source,
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create data directory");
        }
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let mut db = AuthDb { conn, path };
        db.migrate()?;
        Ok(db)
    }

    fn err(&self, source: rusqlite::Error) -> AuthError {
        AuthError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), AuthError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(AuthError::TooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        let path = self.path.clone();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self
                .conn
                .transaction()
                .map_err(|source| AuthError::Sqlite {
                    path: path.clone(),
                    source,
                })?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .and_then(|_| tx.commit())
                .map_err(|source| AuthError::Sqlite {
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// A relay-wide setting, created with `init` the first time it is asked for.
    pub fn meta_or_init(
        &self,
        key: &str,
        init: impl FnOnce() -> String,
    ) -> Result<String, AuthError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(v) = found {
            return Ok(v);
        }
        let value = init();
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                [key, &value],
            )
            .map_err(|e| self.err(e))?;
        // Another process may have won the race: read back what is stored.
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Remember the identity the relay writes a coalition's membership as.
    pub fn put_coalition(&self, id: &DocumentId, relay: &Identity) -> Result<(), AuthError> {
        let json = serde_json::to_string(relay)?;
        self.conn
            .execute(
                "INSERT INTO coalitions (id, relay_identity, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET relay_identity = excluded.relay_identity",
                params![id.to_string(), json, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The identity the relay writes a coalition's membership as, if it manages it.
    pub fn relay_identity(&self, id: &DocumentId) -> Result<Option<Identity>, AuthError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT relay_identity FROM coalitions WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// The coalitions this relay manages.
    pub fn managed_coalitions(&self) -> Result<Vec<DocumentId>, AuthError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM coalitions ORDER BY created_at, id")
            .map_err(|e| self.err(e))?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(ids.into_iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Create an invite that expires at unix time `expires_at`.
    pub fn create_invite(
        &mut self,
        spec: &InviteSpec,
        expires_at: i64,
    ) -> Result<NewInvite, AuthError> {
        if spec.user.trim().is_empty() || spec.org.trim().is_empty() {
            return Err(AuthError::BadRequest(
                "an invite names a person and an organisation".into(),
            ));
        }
        // 160 random bits: above the 128 the contract asks for, still short enough to read out.
        let code = random_secret("inv-", 20);
        let path = self.path.clone();
        let sql = |source| AuthError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let person = person_id(&tx, &spec.user, &spec.org).map_err(sql)?;
        tx.execute(
            "INSERT INTO invites (code_hash, coalition_id, person_id, role, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                hash_secret(&code),
                spec.coalition.to_string(),
                person,
                spec.role,
                now(),
                expires_at
            ],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(NewInvite { code, expires_at })
    }

    /// Trade an invite for a device credential. `actor` is the device's automerge actor id
    /// (32 hex digits), bound to the new device; the device keeps to it (see
    /// [`AuthDb::enroll_with`]).
    pub fn enroll(
        &mut self,
        invite: &str,
        device: &str,
        actor: &str,
    ) -> Result<Enrolled, AuthError> {
        self.enroll_with(invite, device, actor, false)
    }

    /// [`AuthDb::enroll`], saying whether the device makes new actors as it goes (a stock
    /// automerge-repo client makes one per document): if so, an unbound actor first seen on
    /// its connections is bound to it; if not, changes by unbound actors are refused.
    pub fn enroll_with(
        &mut self,
        invite: &str,
        device: &str,
        actor: &str,
        binds_seen_actors: bool,
    ) -> Result<Enrolled, AuthError> {
        // An invite as printed may carry the relay's QUIC port and certificate pin after the
        // code (`inv-CODE.PORT.PIN`); those are for the device. Browsers and other clients
        // that send the whole text enroll as well.
        let invite = invite.trim().split('.').next().unwrap_or_default();
        let device = device.trim();
        if device.is_empty() || device.len() > 200 {
            return Err(AuthError::BadRequest(
                "`device` must be a name of 1 to 200 characters".into(),
            ));
        }
        if !is_actor_hex(actor) {
            return Err(AuthError::BadRequest(
                "`actor` must be 32 hexadecimal digits (the device's automerge actor id)".into(),
            ));
        }
        let actor = actor.to_ascii_lowercase();
        let path = self.path.clone();
        let sql = |source| AuthError::Sqlite {
            path: path.clone(),
            source,
        };
        let now = now();
        // IMMEDIATE takes the write lock first, so two enrollments with one code cannot both
        // see it unused.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let row: Option<InviteRow> = tx
            .query_row(
                "SELECT i.coalition_id, i.person_id, i.role, i.expires_at, i.used_at, p.user, p.org
                 FROM invites i JOIN people p ON p.id = i.person_id WHERE i.code_hash = ?1",
                [hash_secret(invite.trim())],
                |r| {
                    Ok(InviteRow {
                        coalition: r.get(0)?,
                        person: r.get(1)?,
                        role: r.get(2)?,
                        expires_at: r.get(3)?,
                        used_at: r.get(4)?,
                        user: r.get(5)?,
                        org: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(sql)?;
        let Some(InviteRow {
            coalition,
            person,
            role,
            expires_at,
            used_at,
            user,
            org,
        }) = row
        else {
            return Err(AuthError::InvalidInvite);
        };
        if used_at.is_some() {
            return Err(AuthError::InviteUsed);
        }
        if now >= expires_at {
            return Err(AuthError::InviteExpired);
        }
        let bound: Option<String> = tx
            .query_row(
                "SELECT device_id FROM actors WHERE actor = ?1",
                [&actor],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        if bound.is_some() {
            return Err(AuthError::ActorTaken(actor));
        }
        let device_id = uuid::Uuid::now_v7().to_string();
        let credential = random_secret("cred-", 32);
        tx.execute(
            "INSERT INTO devices (id, person_id, name, role, credential_hash, enrolled_at,
                                  binds_seen_actors)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                device_id,
                person,
                device,
                role,
                hash_secret(&credential),
                now,
                binds_seen_actors
            ],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO device_coalitions (device_id, coalition_id) VALUES (?1, ?2)",
            params![device_id, coalition],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO actors (actor, device_id, bound_at, source) VALUES (?1, ?2, ?3, 'enrolled')",
            params![actor, device_id, now],
        )
        .map_err(sql)?;
        tx.execute(
            "UPDATE invites SET used_at = ?1, device_id = ?2 WHERE code_hash = ?3",
            params![now, device_id, hash_secret(invite.trim())],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(Enrolled {
            credential,
            device_id,
            user,
            org,
            role,
            coalitions: vec![coalition],
        })
    }

    /// Check a credential; records that the device was seen.
    pub fn authenticate(&self, credential: &str) -> Result<DeviceAuth, AuthError> {
        let row: Option<(String, String, String, String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT d.id, p.user, p.org, d.role, d.revoked_at
                 FROM devices d JOIN people p ON p.id = d.person_id WHERE d.credential_hash = ?1",
                [hash_secret(credential.trim())],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((device_id, user, org, role, revoked_at)) = row else {
            return Err(AuthError::Unauthorized);
        };
        if revoked_at.is_some() {
            return Err(AuthError::DeviceRevoked);
        }
        // Last seen is informational: a failure to write it must not refuse the device.
        if let Err(e) = self.conn.execute(
            "UPDATE devices SET last_seen_at = ?1 WHERE id = ?2",
            params![now(), device_id],
        ) {
            tracing::warn!(error = %e, "cannot record last seen");
        }
        let coalitions = self.device_coalitions(&device_id)?;
        Ok(DeviceAuth {
            device_id,
            user,
            org,
            role,
            coalitions: coalitions.iter().filter_map(|c| c.parse().ok()).collect(),
        })
    }

    fn device_coalitions(&self, device_id: &str) -> Result<Vec<String>, AuthError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT coalition_id FROM device_coalitions WHERE device_id = ?1 ORDER BY coalition_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([device_id], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The device an actor is bound to, if any.
    pub fn actor_owner(&self, actor: &str) -> Result<Option<ActorOwner>, AuthError> {
        self.conn
            .query_row(
                "SELECT d.id, p.user, p.org, d.revoked_at IS NOT NULL, d.binds_seen_actors
                 FROM actors a JOIN devices d ON d.id = a.device_id
                 JOIN people p ON p.id = d.person_id WHERE a.actor = ?1",
                [actor],
                |r| {
                    Ok(ActorOwner {
                        device_id: r.get(0)?,
                        user: r.get(1)?,
                        org: r.get(2)?,
                        revoked: r.get(3)?,
                        binds_seen_actors: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Whether a device binds actors first seen on its connections (see
    /// [`AuthDb::enroll_with`]).
    pub fn binds_seen_actors(&self, device_id: &str) -> Result<bool, AuthError> {
        self.conn
            .query_row(
                "SELECT binds_seen_actors FROM devices WHERE id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()
            .map(|b| b.unwrap_or(false))
            .map_err(|e| self.err(e))
    }

    /// Bind an actor first seen in a device's changes to it. Returns the device the actor is
    /// bound to (this one, or another that bound it first: actors are never rebound).
    pub fn bind_actor(&self, actor: &str, device_id: &str) -> Result<String, AuthError> {
        self.conn
            .execute(
                "INSERT INTO actors (actor, device_id, bound_at, source) VALUES (?1, ?2, ?3, 'seen')
                 ON CONFLICT (actor) DO NOTHING",
                params![actor, device_id, now()],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .query_row(
                "SELECT device_id FROM actors WHERE actor = ?1",
                [actor],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Every device (of one coalition, if given), oldest first.
    pub fn devices(&self, coalition: Option<&DocumentId>) -> Result<Vec<DeviceRow>, AuthError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.id, d.name, p.user, p.org, d.role, d.enrolled_at, d.last_seen_at, d.revoked_at
                 FROM devices d JOIN people p ON p.id = d.person_id
                 WHERE ?1 IS NULL OR d.id IN
                    (SELECT device_id FROM device_coalitions WHERE coalition_id = ?1)
                 ORDER BY d.enrolled_at, d.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([coalition.map(|c| c.to_string())], |r| {
                Ok(DeviceRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    user: r.get(2)?,
                    org: r.get(3)?,
                    role: r.get(4)?,
                    coalitions: vec![],
                    enrolled_at: r.get(5)?,
                    last_seen_at: r.get(6)?,
                    revoked_at: r.get(7)?,
                    actors: vec![],
                })
            })
            .map_err(|e| self.err(e))?;
        let mut out: Vec<DeviceRow> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        for d in &mut out {
            d.coalitions = self.device_coalitions(&d.id)?;
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT actor FROM actors WHERE device_id = ?1 ORDER BY bound_at, actor",
                )
                .map_err(|e| self.err(e))?;
            d.actors = stmt
                .query_map([&d.id], |r| r.get(0))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// Revoke a device. Revoking twice keeps the first time.
    pub fn revoke(&self, device_id: &str) -> Result<(), AuthError> {
        let n = self
            .conn
            .execute(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
                params![now(), device_id],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(AuthError::NotFound {
                what: "device",
                id: device_id.to_string(),
            });
        }
        Ok(())
    }

    /// Ids of the revoked devices.
    pub fn revoked_devices(&self) -> Result<BTreeSet<String>, AuthError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM devices WHERE revoked_at IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn person_id(tx: &rusqlite::Transaction<'_>, user: &str, org: &str) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO people (user, org) VALUES (?1, ?2) ON CONFLICT (user, org) DO NOTHING",
        [user, org],
    )?;
    tx.query_row(
        "SELECT id FROM people WHERE user = ?1 AND org = ?2",
        [user, org],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InviteSpec {
        InviteSpec {
            coalition: DocumentId::new_random(),
            user: "dario".into(),
            org: "BHMAC".into(),
            role: "nmac".into(),
        }
    }

    const ACTOR: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_invite_enrolls_one_device_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut db = AuthDb::open(dir.path())?;
        let spec = spec();
        let invite = db.create_invite(&spec, now() + 3600)?;
        assert!(invite.code.len() >= 4 + 32, "at least 128 bits of hex");
        let stored: String = db
            .conn
            .query_row("SELECT code_hash FROM invites", [], |r| r.get(0))?;
        assert_ne!(stored, invite.code, "codes are stored hashed");

        let enrolled = db.enroll(&invite.code, "tablet", ACTOR)?;
        assert_eq!(enrolled.coalitions, vec![spec.coalition.to_string()]);
        assert!(matches!(
            db.enroll(&invite.code, "tablet", "ffffffffffffffffffffffffffffffff"),
            Err(AuthError::InviteUsed)
        ));
        let auth = db.authenticate(&enrolled.credential)?;
        assert_eq!(auth.org, "BHMAC");
        assert!(auth.coalitions.contains(&spec.coalition));
        assert!(matches!(
            db.authenticate("cred-nope"),
            Err(AuthError::Unauthorized)
        ));

        db.revoke(&enrolled.device_id)?;
        assert!(matches!(
            db.authenticate(&enrolled.credential),
            Err(AuthError::DeviceRevoked)
        ));
        assert!(db.revoked_devices()?.contains(&enrolled.device_id));
        Ok(())
    }

    #[test]
    fn an_invite_with_its_quic_endpoint_enrolls_and_binds_actors_as_asked() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut db = AuthDb::open(dir.path())?;
        let invite = db.create_invite(&spec(), now() + 3600)?;
        let printed = format!("{}.8443.e8XNu_UfGld6QA7oCc1", invite.code);
        let enrolled = db.enroll_with(&printed, "browser", ACTOR, true)?;
        assert!(db.binds_seen_actors(&enrolled.device_id)?);
        let owner = db.actor_owner(ACTOR)?.expect("the enrolled actor");
        assert_eq!(owner.device_id, enrolled.device_id);
        assert_eq!(owner.org, "BHMAC");
        assert!(!owner.revoked);
        assert_eq!(db.actor_owner("00000000000000000000000000000000")?, None);
        db.revoke(&enrolled.device_id)?;
        assert!(db.actor_owner(ACTOR)?.expect("still bound").revoked);
        Ok(())
    }

    #[test]
    fn expired_and_unknown_invites_are_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut db = AuthDb::open(dir.path())?;
        let invite = db.create_invite(&spec(), now() - 1)?;
        assert!(matches!(
            db.enroll(&invite.code, "tablet", ACTOR),
            Err(AuthError::InviteExpired)
        ));
        assert!(matches!(
            db.enroll("inv-0000", "tablet", ACTOR),
            Err(AuthError::InvalidInvite)
        ));
        let invite = db.create_invite(&spec(), now() + 60)?;
        assert!(matches!(
            db.enroll(&invite.code, "tablet", "not-hex"),
            Err(AuthError::BadRequest(_))
        ));
        Ok(())
    }

    #[test]
    fn an_actor_is_never_rebound() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut db = AuthDb::open(dir.path())?;
        let a = db.create_invite(&spec(), now() + 60)?;
        let b = db.create_invite(&spec(), now() + 60)?;
        let first = db.enroll(&a.code, "one", ACTOR)?;
        assert!(matches!(
            db.enroll(&b.code, "two", ACTOR),
            Err(AuthError::ActorTaken(_))
        ));
        let second = db.enroll(&b.code, "two", "11111111111111111111111111111111")?;
        assert_eq!(db.bind_actor("22", &second.device_id)?, second.device_id);
        assert_eq!(db.bind_actor("22", &first.device_id)?, second.device_id);
        Ok(())
    }
}
