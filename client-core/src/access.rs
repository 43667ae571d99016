//! Who may write what: roles mapped to documents and collections.
//!
//! Permission boundaries follow document boundaries: the manifest is the coordinator's, the
//! plan the mine action centre's and ministry's, each partner and operator document its own
//! organisation's, and the comments document everyone's. The one exception inside a document
//! is the narrative, which coordinators write beside the ministry.

use crate::coalition::Identity;
use crate::error::EditError;
use crate::model::{keys, DocKind, Role};

/// Whether an organisation holding `roles` may write `collection` in a document of `kind`
/// owned by `owner`.
pub fn may_write(
    org: &str,
    roles: &[Role],
    kind: DocKind,
    owner: Option<&str>,
    collection: &str,
) -> bool {
    let has = |r: Role| roles.contains(&r);
    match kind {
        DocKind::Manifest => has(Role::Coordinator),
        DocKind::Plan => {
            has(Role::Nmac) || (collection == keys::NARRATIVE && has(Role::Coordinator))
        }
        DocKind::Partner => {
            owner == Some(org)
                && match collection {
                    keys::OFFERS => has(Role::Expertise),
                    _ => has(Role::Donor),
                }
        }
        DocKind::Operator => owner == Some(org) && has(Role::Operator),
        DocKind::Comments => !roles.is_empty(),
    }
}

/// Whether an organisation holding `roles` may create a document of `kind` owned by `owner`.
/// A manifest is a new coalition, made by a relay administrator, never through sync; the plan
/// belongs to the coordinator and the mine action centre; a partner or operator document to
/// its organisation (or the coordinator, who adds members); a comments document to any member.
pub fn may_create(org: &str, roles: &[Role], kind: DocKind, owner: Option<&str>) -> bool {
    let has = |r: Role| roles.contains(&r);
    match kind {
        DocKind::Manifest => false,
        DocKind::Plan => has(Role::Coordinator) || has(Role::Nmac),
        DocKind::Partner => {
            has(Role::Coordinator)
                || (owner == Some(org) && (has(Role::Donor) || has(Role::Expertise)))
        }
        DocKind::Operator => has(Role::Coordinator) || (owner == Some(org) && has(Role::Operator)),
        DocKind::Comments => !roles.is_empty(),
    }
}

/// Refuse, with a clear error, a write the author may not make.
pub fn check_write(
    who: &Identity,
    roles: &[Role],
    kind: DocKind,
    owner: Option<&str>,
    collection: &str,
) -> Result<(), EditError> {
    if may_write(&who.org, roles, kind, owner, collection) {
        Ok(())
    } else {
        Err(EditError::NotAllowed {
            org: who.org.clone(),
            roles: roles.to_vec(),
            kind,
            owner: owner.map(str::to_string),
            collection: collection.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_donor_writes_only_its_own_pledges() {
        let donor = [Role::Donor];
        assert!(may_write(
            "donor-DE",
            &donor,
            DocKind::Partner,
            Some("donor-DE"),
            keys::PLEDGES
        ));
        assert!(!may_write(
            "donor-DE",
            &donor,
            DocKind::Partner,
            Some("donor-NO"),
            keys::PLEDGES
        ));
        assert!(!may_write(
            "donor-DE",
            &donor,
            DocKind::Plan,
            None,
            keys::NEEDS
        ));
    }

    #[test]
    fn who_creates_which_document() {
        assert!(!may_create(
            "ISU",
            &[Role::Coordinator],
            DocKind::Manifest,
            None
        ));
        assert!(may_create(
            "ISU",
            &[Role::Coordinator],
            DocKind::Partner,
            Some("donor-DE")
        ));
        assert!(may_create(
            "donor-DE",
            &[Role::Donor],
            DocKind::Partner,
            Some("donor-DE")
        ));
        assert!(!may_create(
            "donor-DE",
            &[Role::Donor],
            DocKind::Partner,
            Some("donor-NO")
        ));
        assert!(!may_create(
            "donor-DE",
            &[Role::Donor],
            DocKind::Operator,
            Some("donor-DE")
        ));
        assert!(may_create(
            "NPA",
            &[Role::Operator],
            DocKind::Operator,
            Some("NPA")
        ));
        assert!(!may_create("NPA", &[Role::Operator], DocKind::Plan, None));
        assert!(may_create(
            "CMC",
            &[Role::Observer],
            DocKind::Comments,
            Some("CMC")
        ));
        assert!(!may_create("stranger", &[], DocKind::Comments, None));
    }

    #[test]
    fn an_observer_only_comments() {
        let observer = [Role::Observer];
        assert!(may_write(
            "CMC",
            &observer,
            DocKind::Comments,
            None,
            keys::COMMENTS
        ));
        for kind in [
            DocKind::Manifest,
            DocKind::Plan,
            DocKind::Partner,
            DocKind::Operator,
        ] {
            assert!(!may_write(
                "CMC",
                &observer,
                kind,
                Some("CMC"),
                keys::PLEDGES
            ));
        }
    }

    #[test]
    fn operators_cannot_approve_and_coordinators_only_write_narrative_in_the_plan() {
        assert!(!may_write(
            "NPA",
            &[Role::Operator],
            DocKind::Plan,
            None,
            keys::APPROVALS
        ));
        assert!(may_write(
            "ISU",
            &[Role::Coordinator],
            DocKind::Plan,
            None,
            keys::NARRATIVE
        ));
        assert!(!may_write(
            "ISU",
            &[Role::Coordinator],
            DocKind::Plan,
            None,
            keys::HAZARD_AREAS
        ));
        assert!(!may_write(
            "x",
            &[],
            DocKind::Comments,
            None,
            keys::COMMENTS
        ));
    }
}
