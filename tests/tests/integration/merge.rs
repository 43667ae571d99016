//! Three replicas make random edits, then merge in random orders and groupings: all end with
//! identical heads and an identical consolidated report.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use coalition_core::model::*;
use coalition_core::report::{conflicts, Report};
use coalition_core::{Coalition, Edit, Identity};
use proptest::prelude::*;

const T0: i64 = 1_620_000_000;

fn who(user: &str, org: &str, device: &str, n: u8) -> Identity {
    Identity {
        user: user.into(),
        org: org.into(),
        device: device.into(),
        actor: format!("{n:02x}").repeat(16),
    }
}

fn base() -> (Coalition, Vec<Identity>) {
    let coord = who("cora", "MCA", "laptop", 1);
    let info = CoalitionInfo {
        name: "Merge".into(),
        affected_state: "BA".into(),
        treaty_status: TreatyStatus::StateParty,
        entry_into_force: None,
    };
    let creator = Member {
        org: "MCA".into(),
        name: "Ministry".into(),
        kind: OrgKind::AffectedState,
        roles: BTreeMap::new(),
        country: None,
    };
    let mut c = Coalition::create(&coord, info, creator, T0).expect("create");
    for (org, kind) in [("NPA", OrgKind::Operator), ("donor-DE", OrgKind::Donor)] {
        let mut roles = BTreeMap::new();
        roles.insert(kind.default_role().as_str().to_string(), true);
        c.apply(
            &coord,
            Edit::PutMember(Member {
                org: org.into(),
                name: org.into(),
                kind,
                roles,
                country: None,
            }),
            T0,
        )
        .expect("member");
    }
    for i in 0..3 {
        let area = HazardArea {
            id: format!("a{i}"),
            code: format!("HA-{i}"),
            name: format!("Area {i}"),
            admin_area: "Doboj".into(),
            geometry: coalition_core::geo::square_polygon(18.0 + i as f64 * 0.1, 44.7, 50_000.0),
            class: HazardClass::Cha,
            baseline_m2: 50_000,
            hazard_types: vec!["submunitions".into()],
            priority: 3,
            status: AreaStatus::Active,
        };
        c.apply(&coord, Edit::PutHazardArea(area), T0)
            .expect("area");
    }
    let replicas = vec![
        who("cora", "MCA", "tablet-a", 11),
        who("nina", "MCA", "tablet-b", 12),
        who("cora", "MCA", "tablet-c", 13),
    ];
    (c, replicas)
}

/// One random edit a replica can make.
#[derive(Debug, Clone)]
enum Op {
    Priority { area: usize, value: i64 },
    Name { area: usize, suffix: u8 },
    Release { area: usize, m2: i64, approve: bool },
    Pledge { amount: i64, status: u8 },
    Narrative { text: u8 },
    Comment,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..=5i64).prop_map(|(area, value)| Op::Priority { area, value }),
        (0..3usize, any::<u8>()).prop_map(|(area, suffix)| Op::Name { area, suffix }),
        (0..3usize, 1..5_000i64, any::<bool>()).prop_map(|(area, m2, approve)| Op::Release {
            area,
            m2,
            approve
        }),
        (1..1_000_000i64, 0..3u8).prop_map(|(amount, status)| Op::Pledge { amount, status }),
        any::<u8>().prop_map(|text| Op::Narrative { text }),
        Just(Op::Comment),
    ]
}

fn apply(c: &mut Coalition, replica: usize, step: usize, op: &Op) {
    let device = format!("r{replica}");
    let nmac = who("nina", "MCA", &device, 20 + replica as u8);
    let npa = who("opal", "NPA", &device, 30 + replica as u8);
    let donor = who("dora", "donor-DE", &device, 40 + replica as u8);
    let t = T0 + (step * 60) as i64;
    let id = format!("r{replica}-{step}");
    let result = match op {
        Op::Priority { area, value } => {
            let mut a: HazardArea = c
                .find_entity(DocKind::Plan, keys::HAZARD_AREAS, &format!("a{area}"))
                .expect("read")
                .expect("area");
            a.priority = *value;
            c.apply(&nmac, Edit::PutHazardArea(a), t)
        }
        Op::Name { area, suffix } => {
            let mut a: HazardArea = c
                .find_entity(DocKind::Plan, keys::HAZARD_AREAS, &format!("a{area}"))
                .expect("read")
                .expect("area");
            a.name = format!("Area {area} / {suffix}");
            c.apply(&nmac, Edit::PutHazardArea(a), t)
        }
        Op::Release { area, m2, approve } => {
            let entry = LandReleaseEntry {
                id: id.clone(),
                area_id: format!("a{area}"),
                task_id: None,
                operator: "NPA".into(),
                method: Method::Clearance,
                cancelled_m2: 0,
                reduced_m2: 0,
                cleared_m2: *m2,
                items: BTreeMap::new(),
                date_of_information: "2021-05-01".into(),
                location: None,
                amends: None,
                voids: None,
                reason: None,
            };
            let r = c.apply(&npa, Edit::RecordRelease(entry), t);
            if r.is_ok() && *approve {
                let a = Approval {
                    entry_id: id.clone(),
                    decision: Decision::Approved,
                    decided_on: "2021-05-02".into(),
                    note: None,
                };
                c.apply(&nmac, Edit::Approve(a), t + 1).expect("approve");
            }
            r
        }
        Op::Pledge { amount, status } => {
            let status = [
                PledgeStatus::Announced,
                PledgeStatus::Committed,
                PledgeStatus::Disbursed,
            ][*status as usize];
            let p = Pledge {
                id: "shared-pledge".into(),
                donor: "donor-DE".into(),
                need_id: None,
                pillar: Pillar::Clearance,
                amount: *amount,
                currency: "USD".into(),
                start_year: 2021,
                end_year: 2022,
                channel: "bilateral".into(),
                status,
                committed_on: None,
            };
            // A replica that already moved the pledge further refuses to move it back.
            match c.apply(&donor, Edit::PutPledge(p), t) {
                Err(coalition_core::EditError::Invalid { .. }) => return,
                other => other,
            }
        }
        Op::Narrative { text } => c.apply(
            &nmac,
            Edit::SetNarrative {
                section: Section::Summary,
                text: format!("Summary version {text} from {device}"),
            },
            t,
        ),
        Op::Comment => {
            let comment = Comment {
                id: id.clone(),
                kind: CommentKind::FieldNote,
                about: None,
                text: "note".into(),
                org: "NPA".into(),
                user: "opal".into(),
                at: t,
            };
            c.apply(&npa, Edit::AddComment(comment), t)
        }
    };
    result.unwrap_or_else(|e| panic!("replica {replica} step {step} {op:?}: {e}"));
}

fn heads(c: &mut Coalition) -> BTreeMap<String, Vec<String>> {
    c.docs_mut()
        .map(|d| {
            let mut h: Vec<String> = d.doc.get_heads().iter().map(|h| h.to_string()).collect();
            h.sort();
            (d.id.to_string(), h)
        })
        .collect()
}

fn view(c: &mut Coalition) -> (serde_json::Value, serde_json::Value) {
    let as_of = NaiveDate::from_ymd_opt(2021, 12, 31).expect("date");
    let report = serde_json::to_value(Report::build(c, as_of).expect("report")).expect("json");
    let conflicts = serde_json::to_value(conflicts(c).expect("conflicts")).expect("json");
    (report, conflicts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_merge_order_gives_the_same_heads_and_report(
        ops in proptest::collection::vec((0..3usize, op()), 1..24),
        order in Just(()).prop_perturb(|_, mut rng| {
            let mut o = vec![0usize, 1, 2];
            for i in (1..o.len()).rev() { o.swap(i, rng.random_range(0..=i)); }
            (o, rng.random_bool(0.5))
        }),
    ) {
        let (origin, _) = base();
        let mut replicas: Vec<Coalition> = (0..3).map(|_| origin.clone()).collect();
        for (step, (r, op)) in ops.iter().enumerate() {
            apply(&mut replicas[*r], *r, step, op);
        }
        let (perm, pairwise_first) = order;
        // Grouping one: everything into replica perm[0], one at a time, in the given order.
        let mut a = replicas[perm[0]].clone();
        for &i in &perm[1..] {
            let mut other = replicas[i].clone();
            a.merge(&mut other).expect("merge");
        }
        // Grouping two: perm[2] absorbs perm[1] first, then that pair merges into perm[0]'s
        // copy, or the reverse direction.
        let mut pair = replicas[perm[2]].clone();
        let mut p1 = replicas[perm[1]].clone();
        pair.merge(&mut p1).expect("merge");
        let mut b = replicas[perm[0]].clone();
        if pairwise_first {
            b.merge(&mut pair).expect("merge");
        } else {
            pair.merge(&mut b).expect("merge");
            b = pair;
        }
        prop_assert_eq!(heads(&mut a), heads(&mut b));
        prop_assert_eq!(view(&mut a), view(&mut b));
    }
}
