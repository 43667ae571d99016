//! Who made a change: actor → device → person and organisation, for the hub's checks.
//!
//! The hub asks for every actor it meets in incoming changes, so answers are cached. An actor
//! no device holds may be bound on the spot to the device whose connection brought it, if that
//! device makes new actors as it goes (a stock automerge-repo client); otherwise its changes
//! are refused. Bindings are never changed, so cached answers stay true, except for the
//! revocation of a device, which [`Authors::revoked`] applies.

use std::collections::{BTreeSet, HashMap};

use automerge::ActorId;

use crate::auth::{ActorOwner, AuthDb, AuthError, DeviceAuth};

/// The hub's view of `auth.db`'s actors and devices.
pub struct Authors {
    db: AuthDb,
    owners: HashMap<ActorId, ActorOwner>,
    /// Whether each device binds actors first seen on its connections.
    binds: HashMap<String, bool>,
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
        }
    }

    /// The device `actor` belongs to. An unbound actor is bound to `sender` if `sender` binds
    /// the actors it brings; `None` if it stays unbound.
    pub fn owner(
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
        for owner in self.owners.values_mut() {
            if devices.contains(&owner.device_id) {
                owner.revoked = true;
            }
        }
    }
}
