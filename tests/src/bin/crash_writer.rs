//! Saves land release entries in a loop and prints `saved <id>` after each one is durable.
//! The crash test kills it with SIGKILL at random moments and checks that every printed id is
//! in the store afterwards.
//!
//! Usage: `crash-writer STORE_DIR SEED`

use std::io::Write;

use anyhow::{Context, Result};
use coalition_core::model::*;
use coalition_core::store::Store;
use coalition_core::{Coalition, Edit, Identity};

fn id(user: &str, org: &str, n: u8) -> Identity {
    Identity {
        user: user.into(),
        org: org.into(),
        device: "crash-test".into(),
        actor: format!("{n:02x}").repeat(16),
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("store directory")?;
    let seed: u64 = args.next().context("seed")?.parse()?;
    let coordinator = id("cora", "MCA", 1);
    let operator = id("opal", "NPA", 2);
    let nmac = id("nina", "MCA", 1);
    let mut store = Store::open(&dir)?;
    let now = chrono::Utc::now().timestamp();
    let mut coalition = match store.coalitions()?.first() {
        Some(c) => store.load(&c.id)?,
        None => {
            let info = CoalitionInfo {
                name: "Crash test".into(),
                affected_state: "BA".into(),
                treaty_status: TreatyStatus::StateParty,
                entry_into_force: None,
            };
            let creator = Member {
                org: "MCA".into(),
                name: "Ministry".into(),
                kind: OrgKind::AffectedState,
                roles: Default::default(),
                country: None,
            };
            let mut c = Coalition::create(&coordinator, info, creator, now)?;
            store.save_all(&mut c)?;
            c
        }
    };
    if !coalition.members()?.contains_key("NPA") {
        let mut roles = std::collections::BTreeMap::new();
        roles.insert("operator".to_string(), true);
        let npa = Member {
            org: "NPA".into(),
            name: "Norwegian People's Aid".into(),
            kind: OrgKind::Operator,
            roles,
            country: None,
        };
        let done = coalition.apply(&coordinator, Edit::PutMember(npa), now)?;
        store.save(&mut coalition, &done.docs)?;
    }
    let area_id = "crash-area";
    if coalition
        .find_entity::<HazardArea>(DocKind::Plan, keys::HAZARD_AREAS, area_id)?
        .is_none()
    {
        let area = HazardArea {
            id: area_id.into(),
            code: "HA-1".into(),
            name: "Field".into(),
            admin_area: "Tuzla".into(),
            geometry: coalition_core::geo::square_polygon(18.6, 44.5, 1_000_000.0),
            class: HazardClass::Cha,
            baseline_m2: 1_000_000,
            hazard_types: vec!["submunitions".into()],
            priority: 1,
            status: AreaStatus::Active,
        };
        let done = coalition.apply(&nmac, Edit::PutHazardArea(area), now)?;
        store.save(&mut coalition, &done.docs)?;
    }
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let entry = LandReleaseEntry {
            id: format!("s{seed}-{i}"),
            area_id: area_id.into(),
            task_id: None,
            operator: "NPA".into(),
            method: Method::Clearance,
            cancelled_m2: 0,
            reduced_m2: 0,
            cleared_m2: 100 + (i % 50) as i64,
            items: Default::default(),
            date_of_information: "2021-06-01".into(),
            location: Some(format!("point {i}")),
            amends: None,
            voids: None,
            reason: None,
        };
        let done = coalition.apply(&operator, Edit::RecordRelease(entry), now)?;
        store.save(&mut coalition, &done.docs)?;
        writeln!(out, "saved {}", done.entity_id)?;
        out.flush()?;
        if i % 40 == 39 {
            // Compaction rewrites chunks: crashes must be safe there too.
            store.compact(8)?;
        }
    }
    Ok(())
}
