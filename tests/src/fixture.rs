//! The large coalition both benchmarks use: 100 hazard areas, 3 operators and a given number
//! of approved land release entries.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use coalition_core::model::*;
use coalition_core::{Coalition, Edit, Identity};

/// A benchmark identity with a fixed actor.
pub fn who(user: &str, org: &str, n: u8) -> Identity {
    Identity {
        user: user.into(),
        org: org.into(),
        device: "bench".into(),
        actor: format!("{n:02x}").repeat(16),
    }
}

/// A coalition with `entries` approved land release entries over 100 hazard areas.
pub fn large(entries: usize) -> Result<Coalition> {
    let coord = who("cora", "MCA", 1);
    let info = CoalitionInfo {
        name: "Large".into(),
        affected_state: "XK".into(),
        treaty_status: TreatyStatus::VoluntaryReporting,
        entry_into_force: None,
    };
    let creator = Member {
        org: "MCA".into(),
        name: "Ministry".into(),
        kind: OrgKind::AffectedState,
        roles: BTreeMap::new(),
        country: None,
    };
    let t0 = 1_600_000_000;
    let mut c = Coalition::create(&coord, info, creator, t0)?;
    let operators = ["HALO", "NPA", "KSF"];
    for (i, org) in operators.iter().enumerate() {
        let mut roles = BTreeMap::new();
        roles.insert("operator".to_string(), true);
        c.apply(
            &coord,
            Edit::PutMember(Member {
                org: org.to_string(),
                name: org.to_string(),
                kind: OrgKind::Operator,
                roles,
                country: None,
            }),
            t0 + i as i64,
        )?;
    }
    for a in 0..100 {
        let area = HazardArea {
            id: format!("area-{a}"),
            code: format!("XK-HA-{a:04}"),
            name: format!("Area {a}"),
            admin_area: "Prizren".into(),
            geometry: coalition_core::geo::square_polygon(
                20.7 + (a % 10) as f64 * 0.02,
                42.2 + (a / 10) as f64 * 0.02,
                94_000.0,
            ),
            class: if a % 2 == 0 {
                HazardClass::Cha
            } else {
                HazardClass::Sha
            },
            baseline_m2: 94_000,
            hazard_types: vec!["submunitions".into()],
            priority: 1 + (a % 3) as i64,
            status: AreaStatus::Active,
        };
        c.apply(&coord, Edit::PutHazardArea(area), t0 + 10)?;
    }
    for i in 0..entries {
        let op = operators[i % operators.len()];
        let who_op = who("lead", op, 10 + (i % operators.len()) as u8);
        let day = i % 1_500;
        let date = (NaiveDate::from_ymd_opt(2019, 1, 1).context("date")?
            + chrono::Duration::days(day as i64))
        .to_string();
        let mut items = BTreeMap::new();
        if i % 3 == 0 {
            items.insert("submunitions".to_string(), 1 + (i % 4) as i64);
        }
        let entry = LandReleaseEntry {
            id: format!("entry-{i:05}"),
            area_id: format!("area-{}", i % 100),
            task_id: None,
            operator: op.into(),
            method: Method::Clearance,
            cancelled_m2: 0,
            reduced_m2: 0,
            cleared_m2: 1_000 + (i % 700) as i64,
            items,
            date_of_information: date.clone(),
            location: Some(format!("42.{i:05},20.{i:05}")),
            amends: None,
            voids: None,
            reason: None,
        };
        let t = t0 + 100 + i as i64 * 600;
        c.apply(&who_op, Edit::RecordRelease(entry), t)?;
        let approval = Approval {
            entry_id: format!("entry-{i:05}"),
            decision: Decision::Approved,
            decided_on: date,
            note: None,
        };
        c.apply(&coord, Edit::Approve(approval), t + 60)?;
    }
    Ok(c)
}
