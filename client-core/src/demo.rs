//! The demo coalition: Bosnia and Herzegovina, built from approximate public figures.
//!
//! Figures that are known (the nine donors of 2017 in their currencies, the 2017 release, the
//! stockpile, deadlines and extensions, remaining contamination in 2017 and 2020) come from
//! `data/se-europe.json` (kept in this crate). What is generated (hazard polygons, tasks,
//! land release entries, victim assistance aggregates) follows that file's rules of thumb and
//! is seeded, so every run builds the same plan. Commits carry the dates the work happened, so
//! the history and "the plan at a date" read like the real sequence of events. A few edits are
//! made concurrently on two devices and show as conflicts.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::coalition::{Coalition, Edit, Identity};
use crate::error::EditError;
use crate::geo::square_polygon;
use crate::model::*;

/// The figures the demo uses, as shipped with the crate.
pub const SOURCE: &str = include_str!("../data/se-europe.json");

/// The seed of every generated part.
pub const SEED: u64 = 2017;

/// The date the demo's story ends; its report reads best as of this date.
pub const AS_OF: &str = "2021-12-31";

#[derive(Deserialize)]
struct Source {
    countries: Vec<serde_json::Value>,
    rules_of_thumb: Rules,
}

#[derive(Deserialize)]
struct Country {
    iso: String,
    name: String,
    entry_into_force: Option<String>,
    contamination: Option<Contamination>,
    stockpile: Option<Stockpile>,
    released_2017: Option<Released2017>,
    donors_2017: Option<Vec<DonorLine>>,
    extension_request_budget: Option<Budget>,
}

#[derive(Deserialize)]
struct Contamination {
    remaining_2017_m2: Option<i64>,
    remaining_2020_m2: Option<i64>,
    mixed_with_ap_mines_m2: Option<i64>,
}

#[derive(Deserialize)]
struct Stockpile {
    cluster_munitions: i64,
    submunitions: i64,
    retained: Option<i64>,
}

#[derive(Deserialize)]
struct Released2017 {
    cleared_m2: i64,
    reduced_m2: i64,
}

#[derive(Deserialize)]
struct DonorLine {
    donor: String,
    amount: i64,
    currency: String,
    pillar: Option<String>,
}

#[derive(Deserialize)]
struct Budget {
    amount: i64,
    currency: String,
}

#[derive(Deserialize)]
struct Rules {
    clearance_cost_usd_per_m2: f64,
    m2_per_submunition_found: [i64; 2],
}

/// Why the demo could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The shipped figures do not parse.
    #[error("demo figures do not parse")]
    Source(#[from] serde_json::Error),
    /// The shipped figures lack Bosnia and Herzegovina.
    #[error("demo figures lack {0}")]
    Missing(&'static str),
    /// An edit was refused: a bug in the demo.
    #[error("demo edit refused")]
    Edit(#[from] EditError),
}

/// Municipalities with cluster munition contamination, and a point inside each.
const PLACES: &[(&str, f64, f64)] = &[
    ("Sarajevo", 18.41, 43.86),
    ("Ilijaš", 18.27, 43.95),
    ("Hadžići", 18.20, 43.82),
    ("Tuzla", 18.67, 44.54),
    ("Lukavac", 18.53, 44.54),
    ("Doboj", 18.09, 44.73),
    ("Zenica", 17.91, 44.20),
    ("Zavidovići", 18.15, 44.45),
    ("Travnik", 17.66, 44.23),
    ("Konjic", 17.96, 43.65),
    ("Mostar", 17.81, 43.34),
    ("Bihać", 15.87, 44.82),
    ("Brčko", 18.81, 44.87),
    ("Bijeljina", 19.21, 44.76),
];

const AREA_NAMES: &[&str] = &[
    "Brdo", "Polje", "Kosa", "Gaj", "Do", "Strana", "Glavica", "Luka", "Vrh", "Ravan",
];

/// The organisations of the demo, with the identity of one person on one device each.
pub struct Cast {
    /// Ministry of Civil Affairs: creates and coordinates the coalition.
    pub ministry: Identity,
    /// Mine action centre staff.
    pub bhmac: Identity,
    /// A second BHMAC tablet, edited offline at the same time.
    pub bhmac_tablet: Identity,
    /// Donors by organisation id.
    pub donors: BTreeMap<String, Identity>,
    /// Operators by organisation id.
    pub operators: BTreeMap<String, Identity>,
    /// The Albanian expertise partner.
    pub expertise: Identity,
    /// A civil society observer.
    pub observer: Identity,
}

fn person(user: &str, org: &str, device: &str, n: u8) -> Identity {
    Identity {
        user: user.into(),
        org: org.into(),
        device: device.into(),
        actor: format!("{:02x}", n).repeat(16),
    }
}

/// Donor organisation id for a donor code of the figures (`DE` → `donor-DE`).
pub fn donor_org(code: &str) -> String {
    format!("donor-{code}")
}

impl Cast {
    fn new(donors: &[DonorLine]) -> Cast {
        Cast {
            ministry: person("amra.hodzic", "MCA-BA", "ministry-laptop", 1),
            bhmac: person("dario.kovac", "BHMAC", "bhmac-tablet-1", 2),
            bhmac_tablet: person("lejla.begic", "BHMAC", "bhmac-tablet-2", 3),
            donors: donors
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let org = donor_org(&d.donor);
                    (
                        org.clone(),
                        person(
                            &format!("desk.{}", d.donor.to_lowercase()),
                            &org,
                            "laptop",
                            10 + i as u8,
                        ),
                    )
                })
                .collect(),
            operators: [("NPA", 30), ("AFBiH", 31), ("CP-FBiH", 32)]
                .into_iter()
                .map(|(org, n)| {
                    (
                        org.to_string(),
                        person(
                            &format!("teamlead.{}", org.to_lowercase()),
                            org,
                            "rugged-tablet",
                            n,
                        ),
                    )
                })
                .collect(),
            expertise: person("ilir.hoxha", "AMMCO", "laptop", 40),
            observer: person("sara.lind", "CMC", "phone", 41),
        }
    }
}

/// Edits of several people, applied in the order of their times as they happened: each
/// device's changes then form a chain in time order, which "the plan at a date" relies on.
#[derive(Default)]
struct Script(Vec<(i64, Identity, Edit)>);

impl Script {
    fn add(&mut self, who: &Identity, edit: Edit, time: i64) {
        self.0.push((time, who.clone(), edit));
    }

    fn run(self, c: &mut Coalition) -> Result<(), EditError> {
        let mut edits = self.0;
        edits.sort_by_key(|(time, ..)| *time);
        for (time, who, edit) in edits {
            c.apply(&who, edit, time)?;
        }
        Ok(())
    }
}

/// Unix time at 09:00 UTC of a date.
fn at(date: &str) -> i64 {
    NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map(|d| {
            d.and_time(NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default())
                .and_utc()
                .timestamp()
        })
        .unwrap_or(0)
}

/// A UUIDv7 made from a date and the seeded generator, so that ids are the same every run.
fn seeded_id(rng: &mut ChaCha8Rng, date: &str) -> String {
    let millis = u64::try_from(at(date)).unwrap_or(0) * 1000;
    let bytes: [u8; 10] = rng.random();
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes)
        .into_uuid()
        .to_string()
}

/// Build the demo coalition for Bosnia and Herzegovina.
pub fn bosnia() -> Result<(Coalition, Cast), DemoError> {
    let source: Source = serde_json::from_str(SOURCE)?;
    let ba = source
        .countries
        .iter()
        .find(|c| c["iso"] == "BA")
        .ok_or(DemoError::Missing("BA"))?;
    let ba: Country = serde_json::from_value(ba.clone())?;
    let ba = &ba;
    let donors = ba
        .donors_2017
        .as_ref()
        .ok_or(DemoError::Missing("donors_2017"))?;
    let contamination = ba
        .contamination
        .as_ref()
        .ok_or(DemoError::Missing("contamination"))?;
    let cast = Cast::new(donors);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let rules = &source.rules_of_thumb;

    let mut c = Coalition::create(
        &cast.ministry,
        CoalitionInfo {
            name: format!("{} CCM country coalition", ba.name),
            affected_state: ba.iso.clone(),
            treaty_status: TreatyStatus::StateParty,
            entry_into_force: ba.entry_into_force.clone(),
        },
        Member {
            org: cast.ministry.org.clone(),
            name: "Ministry of Civil Affairs of Bosnia and Herzegovina".into(),
            kind: OrgKind::AffectedState,
            roles: BTreeMap::new(),
            country: Some("BA".into()),
        },
        at("2017-01-16"),
    )?;
    let t0 = at("2017-01-16");
    let mut script = Script::default();
    let m = cast.ministry.clone();
    let roles = |r: &[Role]| {
        r.iter()
            .map(|r| (r.as_str().to_string(), true))
            .collect::<BTreeMap<_, _>>()
    };
    let mut members = vec![
        Member {
            org: "BHMAC".into(),
            name: "Bosnia and Herzegovina Mine Action Centre".into(),
            kind: OrgKind::Nmac,
            roles: roles(&[Role::Nmac]),
            country: Some("BA".into()),
        },
        Member {
            org: "NPA".into(),
            name: "Norwegian People's Aid".into(),
            kind: OrgKind::Operator,
            roles: roles(&[Role::Operator]),
            country: None,
        },
        Member {
            org: "AFBiH".into(),
            name: "Armed Forces of Bosnia and Herzegovina".into(),
            kind: OrgKind::Operator,
            roles: roles(&[Role::Operator]),
            country: Some("BA".into()),
        },
        Member {
            org: "CP-FBiH".into(),
            name: "Civil Protection of the Federation of BiH".into(),
            kind: OrgKind::Operator,
            roles: roles(&[Role::Operator]),
            country: Some("BA".into()),
        },
        Member {
            org: "AMMCO".into(),
            name: "Albanian Mine and Munitions Coordination Office".into(),
            kind: OrgKind::Expertise,
            roles: roles(&[Role::Expertise]),
            country: Some("AL".into()),
        },
        Member {
            org: "CMC".into(),
            name: "Cluster Munition Coalition".into(),
            kind: OrgKind::Observer,
            roles: roles(&[Role::Observer]),
            country: None,
        },
    ];
    for d in donors {
        let name = match d.donor.as_str() {
            "EU" => "European Union".to_string(),
            code => crate::refdata::country(code)
                .map(|c| c.name.to_string())
                .unwrap_or_else(|| code.to_string()),
        };
        members.push(Member {
            org: donor_org(&d.donor),
            name,
            kind: OrgKind::Donor,
            roles: roles(&[Role::Donor]),
            country: (d.donor != "EU").then(|| d.donor.clone()),
        });
    }
    for member in members {
        script.add(&m, Edit::PutMember(member), t0);
    }
    let rates: &[(&str, &str, f64)] = &[
        ("EUR", "2017-01-01", 1.13),
        ("NOK", "2017-01-01", 0.121),
        ("CHF", "2017-01-01", 1.016),
        ("JPY", "2017-01-01", 0.0089),
        ("CZK", "2017-01-01", 0.043),
        ("BAM", "2017-01-01", 0.578),
        ("EUR", "2019-01-01", 1.12),
        ("NOK", "2019-01-01", 0.114),
        ("CHF", "2019-01-01", 1.006),
        ("JPY", "2019-01-01", 0.0092),
        ("CZK", "2019-01-01", 0.044),
        ("BAM", "2019-01-01", 0.572),
        ("EUR", "2021-01-01", 1.18),
        ("NOK", "2021-01-01", 0.116),
        ("CHF", "2021-01-01", 1.094),
        ("JPY", "2021-01-01", 0.0091),
        ("CZK", "2021-01-01", 0.046),
        ("BAM", "2021-01-01", 0.605),
    ];
    for (currency, date, rate) in rates {
        script.add(
            &m,
            Edit::AddExchangeRate(ExchangeRate {
                currency: currency.to_string(),
                date: date.to_string(),
                usd_per_unit: *rate,
                source: "approximate annual average (demo)".into(),
            }),
            t0,
        );
    }

    let nmac = cast.bhmac.clone();
    // Obligations and the extension history.
    script.add(
        &nmac,
        Edit::PutObligation(Obligation {
            pillar: Pillar::Stockpile,
            legal_deadline: Some("2019-03-01".into()),
            current_deadline: Some("2019-03-01".into()),
            completed_on: Some("2012-12-31".into()),
        }),
        t0,
    );
    script.add(
        &nmac,
        Edit::PutObligation(Obligation {
            pillar: Pillar::Clearance,
            legal_deadline: Some("2021-03-01".into()),
            current_deadline: Some("2021-03-01".into()),
            completed_on: None,
        }),
        t0,
    );
    let ext1 = seeded_id(&mut rng, "2020-02-28");
    script.add(
        &nmac,
        Edit::AddExtensionRequest(ExtensionRequest {
            id: ext1.clone(),
            pillar: Pillar::Clearance,
            requested_deadline: "2022-09-01".into(),
            previous_deadline: "2021-03-01".into(),
            submitted_on: "2020-02-28".into(),
            status: ExtensionStatus::Submitted,
            budget: None,
            budget_currency: None,
        }),
        at("2020-02-28"),
    );
    script.add(
        &nmac,
        Edit::DecideExtension {
            id: ext1,
            status: ExtensionStatus::Granted,
        },
        at("2020-11-26"),
    );
    let budget = ba.extension_request_budget.as_ref();
    script.add(
        &nmac,
        Edit::AddExtensionRequest(ExtensionRequest {
            id: seeded_id(&mut rng, "2021-11-15"),
            pillar: Pillar::Clearance,
            requested_deadline: "2023-09-01".into(),
            previous_deadline: "2022-09-01".into(),
            submitted_on: "2021-11-15".into(),
            status: ExtensionStatus::Submitted,
            budget: budget.map(|b| b.amount),
            budget_currency: budget.map(|b| b.currency.clone()),
        }),
        at("2021-11-15"),
    );

    // Stockpile, destroyed 2011-2012.
    if let Some(s) = &ba.stockpile {
        let line = seeded_id(&mut rng, "2017-01-16");
        script.add(
            &nmac,
            Edit::PutStockpileLine(StockpileLine {
                id: line.clone(),
                munition_type: "Cluster munitions (KB-1, KB-2, M87 Orkan rockets)".into(),
                declared: s.cluster_munitions,
                declared_submunitions: s.submunitions,
                retained: s.retained.unwrap_or(0),
                transferred: 0,
            }),
            t0,
        );
        let events = [
            ("2011-06-30", 0.3),
            ("2011-12-15", 0.35),
            ("2012-06-29", 0.2),
            ("2012-11-30", 0.15),
        ];
        let mut left = (s.cluster_munitions, s.submunitions);
        for (i, (date, share)) in events.iter().enumerate() {
            let last = i == events.len() - 1;
            let q = if last {
                left.0
            } else {
                (s.cluster_munitions as f64 * share).round() as i64
            };
            let sub = if last {
                left.1
            } else {
                (s.submunitions as f64 * share).round() as i64
            };
            left = (left.0 - q, left.1 - sub);
            script.add(
                &nmac,
                Edit::AddDestruction(DestructionEvent {
                    id: seeded_id(&mut rng, date),
                    line_id: line.clone(),
                    date: date.to_string(),
                    quantity: q,
                    submunitions: sub,
                }),
                t0,
            );
        }
    }

    // Hazard areas: the 2017 remaining contamination split into polygons.
    let remaining_2017 = contamination.remaining_2017_m2.unwrap_or(6_470_000);
    let area_count = 42;
    let weights: Vec<f64> = (0..area_count)
        .map(|_| rng.random_range(0.3..2.5))
        .collect();
    let total_weight: f64 = weights.iter().sum();
    let mut mixed_left = contamination.mixed_with_ap_mines_m2.unwrap_or(0);
    let mut areas = Vec::new();
    let mut assigned = 0;
    for (i, w) in weights.iter().enumerate() {
        let baseline = if i == area_count - 1 {
            remaining_2017 - assigned
        } else {
            (remaining_2017 as f64 * w / total_weight).round() as i64
        };
        assigned += baseline;
        let (place, lon, lat) = PLACES[i % PLACES.len()];
        let lon = lon + rng.random_range(-0.08..0.08);
        let lat = lat + rng.random_range(-0.06..0.06);
        let class = if rng.random_bool(0.6) {
            HazardClass::Cha
        } else {
            HazardClass::Sha
        };
        let mut hazard_types = vec!["submunitions".to_string()];
        if mixed_left > 0 && rng.random_bool(0.2) {
            hazard_types.push("ap_mines".into());
            mixed_left -= baseline;
        }
        let area = HazardArea {
            id: seeded_id(&mut rng, "2017-01-20"),
            code: format!("BA-HA-{:04}", i + 1),
            name: format!(
                "{place} – {}",
                AREA_NAMES[rng.random_range(0..AREA_NAMES.len())]
            ),
            admin_area: place.to_string(),
            geometry: square_polygon(lon, lat, baseline as f64),
            class,
            baseline_m2: baseline,
            hazard_types,
            priority: rng.random_range(1..=3),
            status: AreaStatus::Active,
        };
        script.add(&nmac, Edit::PutHazardArea(area.clone()), at("2017-01-20"));
        areas.push(area);
    }

    // Tasks: one per area, spread over the operators.
    let operators: Vec<String> = cast.operators.keys().cloned().collect();
    let mut tasks = Vec::new();
    for (i, a) in areas.iter().enumerate() {
        let method = match a.class {
            HazardClass::Cha => Method::Clearance,
            HazardClass::Sha => Method::Ts,
        };
        let task = Task {
            id: seeded_id(&mut rng, "2017-02-01"),
            code: format!("BA-T-{:04}", i + 1),
            area_id: a.id.clone(),
            operator: operators[i % operators.len()].clone(),
            method,
            planned_start: Some("2017-03-01".into()),
            planned_end: Some("2022-09-01".into()),
        };
        script.add(&nmac, Edit::PutTask(task.clone()), at("2017-02-01"));
        tasks.push(task);
    }

    // Land release, 2017-2021: the 2017 figures as published, then a pace that reaches the
    // 2020 remaining figure, then a slower 2021.
    let released_2017 = ba.released_2017.as_ref();
    let target_2020 = contamination.remaining_2020_m2.unwrap_or(2_240_000);
    let y2017 = released_2017
        .map(|r| r.cleared_m2 + r.reduced_m2)
        .unwrap_or(870_000);
    let per_year_2018_2020 = (remaining_2017 - y2017 - target_2020) / 3;
    let plan: [(i32, i64); 5] = [
        (2017, y2017),
        (2018, per_year_2018_2020),
        (2019, per_year_2018_2020),
        (2020, per_year_2018_2020),
        (2021, 880_000),
    ];
    let mut left: Vec<i64> = areas.iter().map(|a| a.baseline_m2).collect();
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut recorded: BTreeMap<String, LandReleaseEntry> = BTreeMap::new();
    for (year, budget) in plan {
        let mut remaining_budget = budget;
        let mut guard = 0;
        while remaining_budget > 0 && guard < 10_000 {
            guard += 1;
            let open: Vec<usize> = (0..areas.len()).filter(|i| left[*i] > 0).collect();
            if open.is_empty() {
                break;
            }
            let i = open[rng.random_range(0..open.len())];
            let task = &tasks[i];
            let size = rng
                .random_range(8_000..40_000)
                .min(left[i])
                .min(remaining_budget);
            left[i] -= size;
            remaining_budget -= size;
            let month = rng.random_range(3..=11);
            let day = rng.random_range(1..=28);
            let date = format!("{year}-{month:02}-{day:02}");
            let density = rng.random_range(
                rules.m2_per_submunition_found[0]..=rules.m2_per_submunition_found[1],
            );
            let mut items = BTreeMap::new();
            let found = size / density;
            if found > 0 {
                items.insert("submunitions".to_string(), found);
            }
            let (cancelled, reduced, cleared) = match task.method {
                Method::Ts => (0, size, 0),
                Method::Nts => (size, 0, 0),
                _ => (0, 0, size),
            };
            let entry = LandReleaseEntry {
                id: seeded_id(&mut rng, &date),
                area_id: task.area_id.clone(),
                task_id: Some(task.id.clone()),
                operator: task.operator.clone(),
                method: task.method,
                cancelled_m2: cancelled,
                reduced_m2: reduced,
                cleared_m2: cleared,
                items,
                date_of_information: date.clone(),
                location: None,
                amends: None,
                voids: None,
                reason: None,
            };
            let who = &cast.operators[&task.operator];
            script.add(who, Edit::RecordRelease(entry.clone()), at(&date));
            entries.push((entry.id.clone(), date.clone()));
            recorded.insert(entry.id.clone(), entry);
            if left[i] == 0 {
                let mut done = areas[i].clone();
                done.status = AreaStatus::Released;
                script.add(&nmac, Edit::PutHazardArea(done), at(&date) + 3600);
            }
        }
    }
    // The mine action centre approves what came in, except the last few weeks.
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    let pending_from = entries.len().saturating_sub(6);
    for (id, date) in &entries[..pending_from] {
        let decided = (NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap_or_default()
            + chrono::Duration::days(14))
        .to_string();
        script.add(
            &nmac,
            Edit::Approve(Approval {
                entry_id: id.clone(),
                decision: Decision::Approved,
                decided_on: decided.clone(),
                note: None,
            }),
            at(&decided),
        );
    }
    // A correction: an operator amends an over-reported entry; the amendment is approved.
    if let Some((first_id, first_date)) = entries.get(3).cloned() {
        let original = recorded
            .get(&first_id)
            .cloned()
            .ok_or(DemoError::Missing("entry"))?;
        let mut fix = original.clone();
        fix.id = seeded_id(&mut rng, &first_date);
        fix.amends = Some(first_id);
        fix.reason = Some("GPS track showed the cleared strip was 1,000 m² smaller".into());
        let scale = |v: i64| if v > 1_000 { v - 1_000 } else { v };
        fix.cleared_m2 = scale(fix.cleared_m2);
        fix.reduced_m2 = scale(fix.reduced_m2);
        let who = &cast.operators[&fix.operator];
        script.add(
            who,
            Edit::RecordRelease(fix.clone()),
            at(&first_date) + 86_400 * 7,
        );
        script.add(
            &nmac,
            Edit::Approve(Approval {
                entry_id: fix.id,
                decision: Decision::Approved,
                decided_on: first_date,
                note: None,
            }),
            at(&original.date_of_information) + 86_400 * 20,
        );
    }

    // Victim assistance aggregates (never personal data).
    for (year, killed, injured, survivors, assisted) in [
        (2017, 1, 3, 9, 7),
        (2018, 0, 2, 11, 9),
        (2019, 1, 1, 12, 11),
        (2020, 0, 1, 13, 12),
        (2021, 0, 2, 15, 12),
    ] {
        script.add(
            &nmac,
            Edit::PutVictimAssistance(VictimAssistanceYear {
                year,
                killed: Some(killed),
                injured: Some(injured),
                survivors: Some(survivors),
                assisted: Some(assisted),
            }),
            at(&format!("{year}-12-20")),
        );
    }

    // Needs: clearance at the rule-of-thumb cost, victim assistance, and the extension budget.
    let clearance_usd = (remaining_2017 as f64 * rules.clearance_cost_usd_per_m2).round() as i64;
    let need_clearance = seeded_id(&mut rng, "2017-01-25");
    let need_va = seeded_id(&mut rng, "2017-01-25");
    let need_ext = seeded_id(&mut rng, "2021-11-15");
    let needs = [
        Need {
            id: need_clearance.clone(),
            pillar: Pillar::Clearance,
            title: "Clearance of remaining cluster munition remnants".into(),
            kind: NeedKind::Financial,
            start_year: 2017,
            end_year: 2021,
            amount: clearance_usd,
            currency: "USD".into(),
            priority: 1,
        },
        Need {
            id: need_va.clone(),
            pillar: Pillar::VictimAssistance,
            title: "Rehabilitation and socio-economic inclusion of survivors".into(),
            kind: NeedKind::Financial,
            start_year: 2017,
            end_year: 2019,
            amount: 1_500_000,
            currency: "EUR".into(),
            priority: 2,
        },
        Need {
            id: need_ext.clone(),
            pillar: Pillar::Clearance,
            title: "Extension period: clearance of the last sites".into(),
            kind: NeedKind::Financial,
            start_year: 2022,
            end_year: 2023,
            amount: budget.map(|b| b.amount).unwrap_or(2_730_000),
            currency: budget
                .map(|b| b.currency.clone())
                .unwrap_or_else(|| "USD".into()),
            priority: 1,
        },
        Need {
            id: seeded_id(&mut rng, "2017-01-25"),
            pillar: Pillar::Clearance,
            title: "Large-loop detectors for deep clearance".into(),
            kind: NeedKind::Equipment,
            start_year: 2018,
            end_year: 2018,
            amount: 180_000,
            currency: "EUR".into(),
            priority: 3,
        },
    ];
    for n in needs {
        let when = if n.start_year >= 2022 {
            at("2021-11-15")
        } else {
            at("2017-01-25")
        };
        script.add(&nmac, Edit::PutNeed(n), when);
    }

    // The nine donors of 2017, in their own currencies; most paid during the year.
    for (i, d) in donors.iter().enumerate() {
        let org = donor_org(&d.donor);
        let who = &cast.donors[&org];
        let pillar = match d.pillar.as_deref() {
            Some("victim_assistance") => Pillar::VictimAssistance,
            _ => Pillar::Clearance,
        };
        let pledge_id = seeded_id(&mut rng, "2017-02-15");
        let need = if pillar == Pillar::VictimAssistance {
            need_va.clone()
        } else {
            need_clearance.clone()
        };
        let mut pledge = Pledge {
            id: pledge_id.clone(),
            donor: org.clone(),
            need_id: Some(need),
            pillar,
            amount: d.amount,
            currency: d.currency.clone(),
            start_year: 2017,
            end_year: 2017,
            channel: if d.donor == "NO" {
                "NPA".into()
            } else {
                "bilateral".into()
            },
            status: PledgeStatus::Announced,
            committed_on: None,
        };
        script.add(who, Edit::PutPledge(pledge.clone()), at("2017-02-15"));
        pledge.status = PledgeStatus::Committed;
        pledge.committed_on = Some("2017-04-03".into());
        script.add(who, Edit::PutPledge(pledge.clone()), at("2017-04-03"));
        if i % 4 != 3 {
            script.add(
                who,
                Edit::AddDisbursement(Disbursement {
                    id: seeded_id(&mut rng, "2017-09-29"),
                    pledge_id: pledge_id.clone(),
                    amount: d.amount,
                    currency: d.currency.clone(),
                    date: "2017-09-29".into(),
                }),
                at("2017-09-29"),
            );
            pledge.status = PledgeStatus::Disbursed;
            script.add(who, Edit::PutPledge(pledge), at("2017-09-29"));
        }
    }
    // Multi-year pledges after 2017, some not yet committed.
    let later: &[(&str, i64, &str, i64, i64, PledgeStatus)] = &[
        ("US", 1_500_000, "USD", 2018, 2020, PledgeStatus::Committed),
        ("NO", 10_000_000, "NOK", 2019, 2021, PledgeStatus::Committed),
        ("DE", 1_200_000, "EUR", 2020, 2021, PledgeStatus::Announced),
        ("JP", 60_000_000, "JPY", 2022, 2023, PledgeStatus::Announced),
    ];
    for (code, amount, currency, start, end, status) in later {
        let org = donor_org(code);
        let who = &cast.donors[&org];
        let date = format!("{start}-03-01");
        let mut pledge = Pledge {
            id: seeded_id(&mut rng, &date),
            donor: org.clone(),
            need_id: Some(if *start >= 2022 {
                need_ext.clone()
            } else {
                need_clearance.clone()
            }),
            pillar: Pillar::Clearance,
            amount: *amount,
            currency: currency.to_string(),
            start_year: *start,
            end_year: *end,
            channel: "bilateral".into(),
            status: PledgeStatus::Announced,
            committed_on: None,
        };
        script.add(who, Edit::PutPledge(pledge.clone()), at(&date));
        if *status == PledgeStatus::Committed {
            pledge.status = PledgeStatus::Committed;
            pledge.committed_on = Some(format!("{start}-05-01"));
            script.add(
                who,
                Edit::PutPledge(pledge.clone()),
                at(&format!("{start}-05-01")),
            );
            script.add(
                who,
                Edit::AddDisbursement(Disbursement {
                    id: seeded_id(&mut rng, &date),
                    pledge_id: pledge.id.clone(),
                    amount: amount / (end - start + 1),
                    currency: currency.to_string(),
                    date: format!("{start}-10-01"),
                }),
                at(&format!("{start}-10-01")),
            );
        }
    }
    script.add(
        &cast.expertise,
        Edit::PutOffer(InKindOffer {
            id: seeded_id(&mut rng, "2018-04-10"),
            partner: cast.expertise.org.clone(),
            need_id: Some(need_clearance),
            pillar: Pillar::Clearance,
            expertise: "Quality management and Kukës clearance lessons".into(),
            person_days: 60,
            value: 30_000,
            currency: "EUR".into(),
            year: 2018,
        }),
        at("2018-04-10"),
    );

    // Narrative.
    let narrative = [
        (Section::Summary, "Bosnia and Herzegovina will release all remaining cluster munition contaminated areas by the extended Article 4 deadline, with national teams and NPA working in the most affected municipalities around Sarajevo, Tuzla and Doboj."),
        (Section::Challenges, "Mixed contamination with anti-personnel mines slows technical survey; several sites are on steep, forested slopes reachable only in summer."),
        (Section::ResourceMobilisation, "National budget covers BHMAC and Armed Forces teams; donor funds are sought for NPA survey and clearance capacity until completion."),
        (Section::RiskEducation, "Risk education sessions in schools and communities near remaining sites, delivered by Civil Protection and the Red Cross."),
    ];
    for (section, text) in narrative {
        script.add(
            &m,
            Edit::SetNarrative {
                section,
                text: text.into(),
            },
            at("2017-03-01"),
        );
    }
    script.add(
        &cast.observer,
        Edit::AddComment(Comment {
            id: seeded_id(&mut rng, "2021-06-10"),
            kind: CommentKind::Comment,
            about: areas.first().map(|a| a.id.clone()),
            text: "Community members report the access road to this site is open again.".into(),
            org: cast.observer.org.clone(),
            user: cast.observer.user.clone(),
            at: at("2021-06-10"),
        }),
        at("2021-06-10"),
    );
    let ops = cast.operators["NPA"].clone();
    script.add(
        &ops,
        Edit::AddComment(Comment {
            id: seeded_id(&mut rng, "2021-09-02"),
            kind: CommentKind::FieldNote,
            about: tasks.first().map(|t| t.id.clone()),
            text: "Heavy rain: teams stood down for three days.".into(),
            org: ops.org.clone(),
            user: ops.user.clone(),
            at: at("2021-09-02"),
        }),
        at("2021-09-02"),
    );

    script.run(&mut c)?;

    // Concurrent edits on two BHMAC tablets, offline at the same meeting: both change the same
    // fields of one hazard area and one need.
    let mut tablet = c.clone();
    tablet.set_actor(&cast.bhmac_tablet);
    c.set_actor(&cast.bhmac);
    let open: Vec<&HazardArea> = areas
        .iter()
        .enumerate()
        .filter(|(i, _)| left[*i] > 0)
        .map(|(_, a)| a)
        .collect();
    if let Some(a) = open.first() {
        let mut mine = (*a).clone();
        mine.priority = 1;
        mine.class = HazardClass::Cha;
        let mut theirs = (*a).clone();
        theirs.priority = 2;
        theirs.class = HazardClass::Cha;
        c.apply(&cast.bhmac, Edit::PutHazardArea(mine), at("2021-10-14"))?;
        tablet.apply(
            &cast.bhmac_tablet,
            Edit::PutHazardArea(theirs),
            at("2021-10-14") + 600,
        )?;
    }
    if let Some(a) = open.get(1) {
        let mut mine = (*a).clone();
        mine.name = format!("{} (north slope)", a.name);
        let mut theirs = (*a).clone();
        theirs.name = format!("{} – upper village", a.admin_area);
        c.apply(
            &cast.bhmac,
            Edit::PutHazardArea(mine),
            at("2021-10-14") + 1200,
        )?;
        tablet.apply(
            &cast.bhmac_tablet,
            Edit::PutHazardArea(theirs),
            at("2021-10-14") + 1500,
        )?;
    }
    c.merge(&mut tablet)?;
    Ok((c, cast))
}
