//! A small coalition for unit tests: every role present, one area of each class, one task.

use std::collections::BTreeMap;

use crate::coalition::{Coalition, Edit, Identity};
use crate::model::*;

pub(crate) const T0: i64 = 1_609_459_200; // 2021-01-01

pub(crate) fn who(user: &str, org: &str, n: u8) -> Identity {
    Identity {
        user: user.into(),
        org: org.into(),
        device: format!("{user}-device"),
        actor: format!("{n:02x}").repeat(16),
    }
}

pub(crate) struct Fixture {
    pub c: Coalition,
    pub coordinator: Identity,
    pub nmac: Identity,
    pub donor: Identity,
    pub other_donor: Identity,
    pub operator: Identity,
    pub other_operator: Identity,
    pub observer: Identity,
    pub sha: String,
    pub cha: String,
}

pub(crate) fn square() -> String {
    crate::geo::square_polygon(18.4, 43.8, 10_000.0)
}

fn member(org: &str, kind: OrgKind) -> Member {
    let mut roles = BTreeMap::new();
    roles.insert(kind.default_role().as_str().to_string(), true);
    Member {
        org: org.into(),
        name: format!("{org} name"),
        kind,
        roles,
        country: None,
    }
}

pub(crate) fn area(id: &str, code: &str, class: HazardClass, baseline: i64) -> HazardArea {
    HazardArea {
        id: id.into(),
        code: code.into(),
        name: format!("{code} field"),
        admin_area: "Tuzla".into(),
        geometry: square(),
        class,
        baseline_m2: baseline,
        hazard_types: vec!["submunitions".into()],
        priority: 2,
        status: AreaStatus::Active,
    }
}

pub(crate) fn entry(
    id: &str,
    area: &str,
    operator: &str,
    method: Method,
    m2: i64,
    date: &str,
) -> LandReleaseEntry {
    let (cancelled_m2, reduced_m2, cleared_m2) = match method {
        Method::Nts => (m2, 0, 0),
        Method::Ts => (0, m2, 0),
        Method::Clearance => (0, 0, m2),
        Method::Eod => (0, 0, 0),
    };
    LandReleaseEntry {
        id: id.into(),
        area_id: area.into(),
        task_id: None,
        operator: operator.into(),
        method,
        cancelled_m2,
        reduced_m2,
        cleared_m2,
        items: BTreeMap::new(),
        date_of_information: date.into(),
        location: None,
        amends: None,
        voids: None,
        reason: None,
    }
}

pub(crate) fn fixture() -> Fixture {
    let coordinator = who("cora", "MCA", 1);
    let nmac = who("nina", "NMAC", 2);
    let donor = who("dora", "donor-DE", 3);
    let other_donor = who("otto", "donor-NO", 4);
    let operator = who("opal", "NPA", 5);
    let other_operator = who("oleg", "HALO", 6);
    let observer = who("obi", "CMC", 7);
    let mut c = Coalition::create(
        &coordinator,
        CoalitionInfo {
            name: "Test coalition".into(),
            affected_state: "BA".into(),
            treaty_status: TreatyStatus::StateParty,
            entry_into_force: Some("2011-03-01".into()),
        },
        member("MCA", OrgKind::Coordinator),
        T0,
    )
    .expect("create");
    for (org, kind) in [
        ("NMAC", OrgKind::Nmac),
        ("donor-DE", OrgKind::Donor),
        ("donor-NO", OrgKind::Donor),
        ("NPA", OrgKind::Operator),
        ("HALO", OrgKind::Operator),
        ("CMC", OrgKind::Observer),
    ] {
        c.apply(&coordinator, Edit::PutMember(member(org, kind)), T0)
            .expect("member");
    }
    c.apply(
        &nmac,
        Edit::PutHazardArea(area("area-sha", "HA-1", HazardClass::Sha, 10_000)),
        T0,
    )
    .expect("sha");
    c.apply(
        &nmac,
        Edit::PutHazardArea(area("area-cha", "HA-2", HazardClass::Cha, 20_000)),
        T0,
    )
    .expect("cha");
    let task = Task {
        id: "task-1".into(),
        code: "T-1".into(),
        area_id: "area-cha".into(),
        operator: "NPA".into(),
        method: Method::Clearance,
        planned_start: Some("2021-02-01".into()),
        planned_end: None,
    };
    c.apply(&nmac, Edit::PutTask(task), T0).expect("task");
    Fixture {
        c,
        coordinator,
        nmac,
        donor,
        other_donor,
        operator,
        other_operator,
        observer,
        sha: "area-sha".into(),
        cha: "area-cha".into(),
    }
}
