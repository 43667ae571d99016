//! What the `coalition-server admin` commands and `serve --demo` do, on the data directory.
//!
//! # The relay identity
//!
//! Each coalition created here gets a *relay identity*, kept in `auth.db`: the coordinator's
//! organisation and user, a device named `coalition-server`, and an Automerge actor of its own
//! (never a device's: two writers with one actor would corrupt the document). The relay
//! writes as it only when a coordinator invites an organisation that is not yet a member: the
//! membership edit is made with [`Edit::PutMember`] in the manifest, as the coordinator would
//! on a device, and is attributed to `coalition-server` in the history.

use std::collections::BTreeMap;

use coalition_core::demo;
use coalition_core::model::{CoalitionInfo, Member, OrgKind, Role, TreatyStatus};
use coalition_core::store::{Store, StoreError};
use coalition_core::sync::DocumentId;
use coalition_core::{Coalition, Edit, EditError, Identity};

use crate::auth::{AuthDb, AuthError, InviteSpec, NewInvite};

/// The device name of relay identities.
pub const RELAY_DEVICE: &str = "coalition-server";

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The document store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The auth database failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The coalition refused the edit.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The demo could not be built.
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    /// No such coalition in the store.
    #[error("no coalition {0} on this relay")]
    UnknownCoalition(String),
    /// A name is not one of a closed set.
    #[error(transparent)]
    UnknownName(#[from] coalition_core::model::UnknownName),
    /// The organisation is a member but does not hold the role.
    #[error("organisation {org} is a member without the role {role}; it holds: {held}")]
    RoleNotHeld {
        /// The organisation.
        org: String,
        /// The role asked for.
        role: String,
        /// The roles it holds.
        held: String,
    },
    /// The organisation must be added but the relay has no identity to add it with.
    #[error("organisation {org} is not a member of coalition {coalition}, and this relay did not create that coalition so it cannot add members; add it from a coordinator's device first")]
    CannotAddMember {
        /// The organisation.
        org: String,
        /// The coalition.
        coalition: String,
    },
}

/// A fresh random actor id, hex.
pub fn random_actor() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// What `admin create-coalition` is asked.
#[derive(Debug, Clone)]
pub struct NewCoalition {
    /// ISO 3166-1 alpha-2 of the affected state.
    pub state: String,
    /// Display name.
    pub name: String,
    /// The coordinating organisation's id.
    pub org: String,
    /// Its full name.
    pub org_name: String,
    /// What kind of organisation it is.
    pub org_kind: OrgKind,
    /// The coordinator person.
    pub user: String,
    /// The state's treaty status.
    pub treaty_status: TreatyStatus,
}

/// Create a coalition as its coordinator, store it, and remember the relay identity.
pub fn create_coalition(
    store: &mut Store,
    auth: &AuthDb,
    spec: &NewCoalition,
    now: i64,
) -> Result<DocumentId, AdminError> {
    let relay = Identity {
        user: spec.user.clone(),
        org: spec.org.clone(),
        device: RELAY_DEVICE.into(),
        actor: random_actor(),
    };
    let mut coalition = Coalition::create(
        &relay,
        CoalitionInfo {
            name: spec.name.clone(),
            affected_state: spec.state.clone(),
            treaty_status: spec.treaty_status,
            entry_into_force: None,
        },
        Member {
            org: spec.org.clone(),
            name: spec.org_name.clone(),
            kind: spec.org_kind,
            roles: BTreeMap::new(),
            country: None,
        },
        now,
    )?;
    store.save_all(&mut coalition)?;
    auth.put_coalition(coalition.id(), &relay)?;
    Ok(*coalition.id())
}

/// The kind of organisation a role implies, for an organisation added by an invite.
fn kind_for(role: Role) -> OrgKind {
    match role {
        Role::Coordinator => OrgKind::Coordinator,
        Role::Nmac => OrgKind::Nmac,
        Role::Donor => OrgKind::Donor,
        Role::Expertise => OrgKind::Expertise,
        Role::Operator => OrgKind::Operator,
        Role::Observer => OrgKind::Observer,
    }
}

/// What an invite did.
#[derive(Debug, Clone)]
pub struct Invited {
    /// The invite.
    pub invite: NewInvite,
    /// True when the organisation was added to the coalition's members for it.
    pub added_member: bool,
}

/// Invite a person of an organisation with a role. The organisation must be a member holding
/// the role; one that is not a member is added (as the relay identity, see the module docs).
pub fn invite(
    store: &mut Store,
    auth: &mut AuthDb,
    spec: &InviteSpec,
    org_name: Option<&str>,
    expires_at: i64,
    now: i64,
) -> Result<Invited, AdminError> {
    let role: Role = spec.role.parse()?;
    let mut coalition = match store.load(&spec.coalition) {
        Ok(c) => c,
        Err(StoreError::UnknownCoalition(_)) => {
            return Err(AdminError::UnknownCoalition(spec.coalition.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let members = coalition.members()?;
    let mut added_member = false;
    match members.get(&spec.org) {
        Some(member) => {
            let held = member.role_set();
            if !held.contains(&role) {
                return Err(AdminError::RoleNotHeld {
                    org: spec.org.clone(),
                    role: spec.role.clone(),
                    held: held
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        None => {
            let relay = auth.relay_identity(&spec.coalition)?.ok_or_else(|| {
                AdminError::CannotAddMember {
                    org: spec.org.clone(),
                    coalition: spec.coalition.to_string(),
                }
            })?;
            coalition.set_actor(&relay);
            let committed = coalition.apply(
                &relay,
                Edit::PutMember(Member {
                    org: spec.org.clone(),
                    name: org_name.unwrap_or(&spec.org).to_string(),
                    kind: kind_for(role),
                    roles: [(role.as_str().to_string(), true)].into_iter().collect(),
                    country: None,
                }),
                now,
            )?;
            store.save(&mut coalition, &committed.docs)?;
            added_member = true;
        }
    }
    let invite = auth.create_invite(spec, expires_at)?;
    Ok(Invited {
        invite,
        added_member,
    })
}

/// One person of the demo to invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPerson {
    /// The role.
    pub role: &'static str,
    /// The organisation.
    pub org: &'static str,
    /// The person (as in `coalition_core::demo::Cast`).
    pub user: &'static str,
}

/// One person per demo role, as `coalition_core::demo::bosnia` casts them.
pub const DEMO_PEOPLE: &[DemoPerson] = &[
    DemoPerson {
        role: "coordinator",
        org: "MCA-BA",
        user: "amra.hodzic",
    },
    DemoPerson {
        role: "nmac",
        org: "BHMAC",
        user: "dario.kovac",
    },
    DemoPerson {
        role: "donor",
        org: "donor-DE",
        user: "desk.de",
    },
    DemoPerson {
        role: "operator",
        org: "NPA",
        user: "teamlead.npa",
    },
    DemoPerson {
        role: "expertise",
        org: "AMMCO",
        user: "ilir.hoxha",
    },
    DemoPerson {
        role: "observer",
        org: "CMC",
        user: "sara.lind",
    },
];

/// The demo as set up for one start of the relay.
#[derive(Debug, Clone)]
pub struct DemoSetup {
    /// The demo coalition.
    pub coalition: DocumentId,
    /// True when it was created on this start.
    pub created: bool,
    /// One fresh invite per demo person.
    pub invites: Vec<(DemoPerson, NewInvite)>,
}

/// Store the demo coalition if the store holds none, then invite one person per demo role.
pub fn setup_demo(
    store: &mut Store,
    auth: &mut AuthDb,
    expires_at: i64,
    now: i64,
) -> Result<DemoSetup, AdminError> {
    let existing = store.coalitions()?;
    let (coalition, created) = match existing.first() {
        Some(c) => (c.id, false),
        None => {
            let (mut coalition, cast) = demo::bosnia()?;
            store.save_all(&mut coalition)?;
            let relay = Identity {
                user: cast.ministry.user.clone(),
                org: cast.ministry.org.clone(),
                device: RELAY_DEVICE.into(),
                actor: random_actor(),
            };
            auth.put_coalition(coalition.id(), &relay)?;
            (*coalition.id(), true)
        }
    };
    let mut invites = Vec::new();
    for person in DEMO_PEOPLE {
        let spec = InviteSpec {
            coalition,
            user: person.user.into(),
            org: person.org.into(),
            role: person.role.into(),
        };
        let made = invite(store, auth, &spec, None, expires_at, now)?;
        invites.push((person.clone(), made.invite));
    }
    Ok(DemoSetup {
        coalition,
        created,
        invites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inviting_a_new_organisation_adds_it_as_the_relay() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(dir.path())?;
        let mut auth = AuthDb::open(dir.path())?;
        let now = 1_700_000_000;
        let id = create_coalition(
            &mut store,
            &auth,
            &NewCoalition {
                state: "BA".into(),
                name: "Test coalition".into(),
                org: "MCA-BA".into(),
                org_name: "Ministry".into(),
                org_kind: OrgKind::AffectedState,
                user: "amra".into(),
                treaty_status: TreatyStatus::StateParty,
            },
            now,
        )?;
        let spec = InviteSpec {
            coalition: id,
            user: "kurt".into(),
            org: "donor-DE".into(),
            role: "donor".into(),
        };
        let made = invite(&mut store, &mut auth, &spec, Some("Germany"), now + 60, now)?;
        assert!(made.added_member);
        let coalition = store.load(&id)?;
        let members = coalition.members()?;
        assert_eq!(members["donor-DE"].name, "Germany");
        assert_eq!(members["donor-DE"].role_set(), vec![Role::Donor]);

        // A member without the role is refused rather than silently granted it.
        let spec = InviteSpec {
            role: "nmac".into(),
            ..spec
        };
        assert!(matches!(
            invite(&mut store, &mut auth, &spec, None, now + 60, now),
            Err(AdminError::RoleNotHeld { .. })
        ));
        Ok(())
    }
}
