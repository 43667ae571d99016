//! Who made a change: actor → device → person and organisation, for the hub's checks.
//!
//! The hub asks for every actor it meets in incoming changes, so answers are cached. An actor
//! no device holds may be bound on the spot to the device whose connection brought it, if that
//! device makes new actors as it goes (a stock automerge-repo client); otherwise its changes
//! are refused. Bindings are never changed, so cached answers stay true, except for the
//! revocation of a device, which [`Authors::revoked`] applies.
//!
//! `admin revoke` writes to `auth.db` from another process, and the hub applies it (closing
//! the device's connections) on its next poll. Until then the device's own connection is
//! live, and the changes it brings of its own actors are judged as made before the
//! revocation: refusing them would make the device set its own work aside, when a revoked
//! device is meant to keep everything it holds. Another device carrying them is refused at
//! once.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::ActorId;

use crate::auth::{ActorOwner, AuthDb, AuthError, DeviceAuth};

/// The hub's view of `auth.db`'s actors and devices.
pub struct Authors {
    db: AuthDb,
    owners: HashMap<ActorId, ActorOwner>,
    /// Whether each device binds actors first seen on its connections.
    binds: HashMap<String, bool>,
    /// Devices whose revocation the hub applied ([`Authors::revoked`]).
    revoked: HashSet<String>,
}

impl std::fmt::Debug for Authors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authors")
            .field("cached", &self.owners.len())
            .finish_non_exhaustive()
    }
}

impl Authors {
    /// Over an open `auth.db`.
    pub fn new(db: AuthDb) -> Authors {
        Authors {
            db,
            owners: HashMap::new(),
            binds: HashMap::new(),
            revoked: HashSet::new(),
        }
    }

    /// The device `actor` belongs to. An unbound actor is bound to `sender` if `sender` binds
    /// the actors it brings; `None` if it stays unbound. The sender's own actors count as
    /// revoked only once the hub applied its revocation (see the module documentation).
    pub fn owner(
        &mut self,
        actor: &ActorId,
        sender: &DeviceAuth,
    ) -> Result<Option<ActorOwner>, AuthError> {
        let owner = self.lookup(actor, sender)?;
        Ok(owner.map(|mut o| {
            if o.device_id == sender.device_id && !self.revoked.contains(&o.device_id) {
                o.revoked = false;
            }
            o
        }))
    }

    /// The device `actor` belongs to, as `auth.db` said when first asked, with the revocations
    /// applied since.
    fn lookup(
        &mut self,
        actor: &ActorId,
        sender: &DeviceAuth,
    ) -> Result<Option<ActorOwner>, AuthError> {
        if let Some(owner) = self.owners.get(actor) {
            return Ok(Some(owner.clone()));
        }
        let hex = actor.to_hex_string();
        let mut owner = self.db.actor_owner(&hex)?;
        if owner.is_none() && self.binds(&sender.device_id)? {
            let bound_to = self.db.bind_actor(&hex, &sender.device_id)?;
            tracing::info!(actor = %hex, device = %bound_to, "bound an actor first seen on a connection");
            owner = self.db.actor_owner(&hex)?;
        }
        if let Some(o) = &owner {
            self.owners.insert(actor.clone(), o.clone());
        }
        Ok(owner)
    }

    fn binds(&mut self, device_id: &str) -> Result<bool, AuthError> {
        if let Some(b) = self.binds.get(device_id) {
            return Ok(*b);
        }
        let b = self.db.binds_seen_actors(device_id)?;
        self.binds.insert(device_id.to_string(), b);
        Ok(b)
    }

    /// These devices were revoked: their actors' changes are refused from now on.
    pub fn revoked(&mut self, devices: &BTreeSet<String>) {
        self.revoked.extend(devices.iter().cloned());
        for owner in self.owners.values_mut() {
            if devices.contains(&owner.device_id) {
                owner.revoked = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::InviteSpec;
    use coalition_core::sync::DocumentId;

    /// A device enrolled with `actor`, as the relay knows it after its credential.
    fn enrolled(db: &mut AuthDb, user: &str, actor: &str) -> anyhow::Result<DeviceAuth> {
        let spec = InviteSpec {
            coalition: DocumentId::new_random(),
            user: user.into(),
            org: "BHMAC".into(),
            role: "nmac".into(),
        };
        let invite = db.create_invite(&spec, chrono::Utc::now().timestamp() + 3600)?;
        let enrolled = db.enroll(&invite.code, "tablet", actor)?;
        Ok(db.authenticate(&enrolled.credential)?)
    }

    #[test]
    fn a_revoked_devices_own_connection_is_not_refused_its_changes_before_the_hub_closes_it(
    ) -> anyhow::Result<()> {
        const OWN: &str = "0123456789abcdef0123456789abcdef";
        const LATER: &str = "fedcba9876543210fedcba9876543210";
        let dir = tempfile::tempdir()?;
        let mut admin = AuthDb::open(dir.path())?;
        let mia = enrolled(&mut admin, "mia", OWN)?;
        let amra = enrolled(&mut admin, "amra", "00112233445566778899aabbccddeeff")?;
        let mut authors = Authors::new(AuthDb::open(dir.path())?);
        let own = ActorId::from(hex::decode(OWN)?);
        let later = ActorId::from(hex::decode(LATER)?);
        admin.bind_actor(LATER, &mia.device_id)?;

        // `admin revoke` wrote to auth.db; the hub has not applied it yet. One actor was seen
        // before the revocation, the other is first asked about after it.
        let seen = authors.owner(&own, &mia)?.expect("bound");
        assert!(!seen.revoked);
        admin.revoke(&mia.device_id)?;
        for actor in [&own, &later] {
            let on_own_connection = authors.owner(actor, &mia)?.expect("bound");
            assert_eq!(on_own_connection.device_id, mia.device_id);
            assert!(
                !on_own_connection.revoked,
                "the device's live connection has its own changes refused"
            );
        }
        assert!(
            authors.owner(&later, &amra)?.expect("bound").revoked,
            "another device carries a change of a device auth.db says is revoked"
        );

        // Once the hub applied the revocation, every change of the device is refused.
        authors.revoked(&BTreeSet::from([mia.device_id.clone()]));
        for actor in [&own, &later] {
            for sender in [&mia, &amra] {
                assert!(authors.owner(actor, sender)?.expect("bound").revoked);
            }
        }
        Ok(())
    }
}
