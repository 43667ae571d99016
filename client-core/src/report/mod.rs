//! The consolidated view of a coalition and the reports coordinators read.
//!
//! Everything here is derived, never stored: the plan's documents are hydrated into one
//! [`State`], land release entries are folded (approved ones only, in date-of-information
//! order, corrections applied), money is converted to USD at dated exchange rates with the
//! original currencies kept beside, and soft rules become [`Flag`]s.

mod article7;
mod conflicts;
mod history;

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ReadDoc, ROOT};
use chrono::{Datelike, Months, NaiveDate};
use serde::Serialize;

use crate::coalition::{read_collection, Coalition};
use crate::error::EditError;
use crate::model::{keys, *};

pub use article7::{Article7, FormF, FormG, FormH, FormI};
pub use conflicts::{conflicts, Conflict, ConflictValue, WHOLE_ENTITY};
pub use history::{history, HistoryEntry, HistoryFilter};

/// Every entity of a coalition, hydrated from all of its documents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct State {
    /// The coalition.
    pub info: Option<CoalitionInfo>,
    /// Member organisations by id.
    pub members: BTreeMap<String, Member>,
    /// Exchange rates by `CUR:date`.
    pub exchange_rates: BTreeMap<String, ExchangeRate>,
    /// Obligations by pillar.
    pub obligations: BTreeMap<String, Obligation>,
    /// Extension requests.
    pub extension_requests: BTreeMap<String, ExtensionRequest>,
    /// Hazard areas.
    pub hazard_areas: BTreeMap<String, HazardArea>,
    /// Re-baselining history.
    pub rebaselines: BTreeMap<String, Rebaseline>,
    /// Tasks.
    pub tasks: BTreeMap<String, Task>,
    /// Task progress by task id.
    pub task_progress: BTreeMap<String, TaskProgress>,
    /// Land release entries (all, as recorded).
    pub releases: BTreeMap<String, LandReleaseEntry>,
    /// Approvals by entry id.
    pub approvals: BTreeMap<String, Approval>,
    /// Stockpile lines.
    pub stockpile: BTreeMap<String, StockpileLine>,
    /// Destruction events.
    pub destruction_events: BTreeMap<String, DestructionEvent>,
    /// Victim assistance by year.
    pub victim_assistance: BTreeMap<String, VictimAssistanceYear>,
    /// Needs.
    pub needs: BTreeMap<String, Need>,
    /// Pledges, with the status that merging settles on.
    pub pledges: BTreeMap<String, Pledge>,
    /// Disbursements.
    pub disbursements: BTreeMap<String, Disbursement>,
    /// In-kind offers.
    pub offers: BTreeMap<String, InKindOffer>,
    /// Narrative sections.
    pub narrative: BTreeMap<String, String>,
    /// Comments.
    pub comments: BTreeMap<String, Comment>,
    /// Pledges whose concurrent statuses include a cancel and a commitment or payment.
    #[serde(skip)]
    pub cancel_commit_conflicts: BTreeSet<String>,
}

impl State {
    /// Hydrate every document of a coalition.
    pub fn of(coalition: &Coalition) -> Result<State, EditError> {
        let mut s = State::default();
        for d in coalition.docs() {
            let doc = &d.doc;
            match d.kind {
                DocKind::Manifest => {
                    s.info = Some(coalition.info()?);
                    s.members = read_collection(doc, keys::MEMBERS)?;
                    s.exchange_rates = read_collection(doc, keys::EXCHANGE_RATES)?;
                }
                DocKind::Plan => {
                    s.obligations = read_collection(doc, keys::OBLIGATIONS)?;
                    s.extension_requests = read_collection(doc, keys::EXTENSIONS)?;
                    s.hazard_areas = read_collection(doc, keys::HAZARD_AREAS)?;
                    s.rebaselines = read_collection(doc, keys::REBASELINES)?;
                    s.tasks = read_collection(doc, keys::TASKS)?;
                    s.approvals = read_collection(doc, keys::APPROVALS)?;
                    s.stockpile = read_collection(doc, keys::STOCKPILE)?;
                    s.destruction_events = read_collection(doc, keys::DESTRUCTIONS)?;
                    s.victim_assistance = read_collection(doc, keys::VICTIM_ASSISTANCE)?;
                    s.needs = read_collection(doc, keys::NEEDS)?;
                    if let Some((_, narrative)) = doc.get(ROOT, keys::NARRATIVE)? {
                        for section in doc.keys(&narrative) {
                            if let Some((_, text)) = doc.get(&narrative, section.as_str())? {
                                s.narrative.insert(section, doc.text(&text)?);
                            }
                        }
                    }
                }
                DocKind::Partner => {
                    let pledges: BTreeMap<String, Pledge> = read_collection(doc, keys::PLEDGES)?;
                    for (id, mut pledge) in pledges {
                        let (status, conflict) = settled_status(doc, &id)?;
                        if let Some(status) = status {
                            pledge.status = status;
                        }
                        if conflict {
                            s.cancel_commit_conflicts.insert(id.clone());
                        }
                        s.pledges.insert(id, pledge);
                    }
                    s.disbursements
                        .extend(read_collection::<Disbursement>(doc, keys::DISBURSEMENTS)?);
                    s.offers
                        .extend(read_collection::<InKindOffer>(doc, keys::OFFERS)?);
                }
                DocKind::Operator => {
                    s.releases
                        .extend(read_collection::<LandReleaseEntry>(doc, keys::RELEASES)?);
                    s.task_progress
                        .extend(read_collection::<TaskProgress>(doc, keys::TASK_PROGRESS)?);
                }
                DocKind::Comments => s.comments = read_collection(doc, keys::COMMENTS)?,
            }
        }
        Ok(s)
    }

    /// Land release entries as they count: approved ones, folded in date-of-information order,
    /// each amend replacing the figures of the entry it corrects and each void removing it.
    /// Keyed by the id of the original entry.
    pub fn effective_releases(&self) -> BTreeMap<String, &LandReleaseEntry> {
        let mut approved: Vec<&LandReleaseEntry> = self
            .releases
            .values()
            .filter(|e| {
                self.approvals
                    .get(&e.id)
                    .is_some_and(|a| a.decision == Decision::Approved)
            })
            .collect();
        approved
            .sort_by(|a, b| (&a.date_of_information, &a.id).cmp(&(&b.date_of_information, &b.id)));
        let mut effective: BTreeMap<String, Option<&LandReleaseEntry>> = BTreeMap::new();
        for e in approved {
            match (&e.amends, &e.voids) {
                (Some(target), _) => {
                    effective.insert(self.root_of(target), Some(e));
                }
                (None, Some(target)) => {
                    effective.insert(self.root_of(target), None);
                }
                (None, None) => {
                    // An original arriving after its own correction (a later-synced device)
                    // must not overwrite that correction.
                    effective.entry(e.id.clone()).or_insert(Some(e));
                }
            }
        }
        effective
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    /// The original entry a chain of corrections goes back to.
    fn root_of(&self, id: &str) -> String {
        let mut current = id.to_string();
        let mut seen = BTreeSet::new();
        while let Some(e) = self.releases.get(&current) {
            let Some(next) = e.amends.as_ref().or(e.voids.as_ref()) else {
                break;
            };
            if !seen.insert(current.clone()) {
                break;
            }
            current = next.clone();
        }
        current
    }

    /// Destroyed quantities per stockpile line, summed from its events.
    pub fn destroyed(&self) -> BTreeMap<String, (i64, i64)> {
        let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for e in self.destruction_events.values() {
            let t = out.entry(e.line_id.clone()).or_default();
            t.0 += e.quantity;
            t.1 += e.submunitions;
        }
        out
    }
}

/// The status a pledge settles on when devices wrote it concurrently: the furthest along the
/// forward path wins; a cancel concurrent with a commitment or payment is reported.
fn settled_status(
    doc: &automerge::AutoCommit,
    pledge_id: &str,
) -> Result<(Option<PledgeStatus>, bool), EditError> {
    let Some((_, pledges)) = doc.get(ROOT, keys::PLEDGES)? else {
        return Ok((None, false));
    };
    let Some((_, pledge)) = doc.get(&pledges, pledge_id)? else {
        return Ok((None, false));
    };
    let values: Vec<PledgeStatus> = doc
        .get_all(&pledge, "status")?
        .into_iter()
        .filter_map(|(v, _)| match v {
            automerge::Value::Scalar(s) => s.as_str().and_then(|s| s.parse().ok()),
            _ => None,
        })
        .collect();
    if values.len() < 2 {
        return Ok((values.first().copied(), false));
    }
    let furthest = values
        .iter()
        .filter(|s| s.rank().is_some())
        .max_by_key(|s| s.rank())
        .copied();
    let cancelled = values.contains(&PledgeStatus::Cancelled);
    let conflict = cancelled && furthest.is_some_and(|s| s.covers_need());
    let settled = if conflict {
        furthest
    } else if cancelled {
        Some(PledgeStatus::Cancelled)
    } else {
        furthest
    };
    Ok((settled, conflict))
}

/// Dated exchange rates, per currency.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    by_currency: BTreeMap<String, Vec<(String, f64)>>,
}

impl Rates {
    /// Index the coalition's exchange rates.
    pub fn new(rates: &BTreeMap<String, ExchangeRate>) -> Rates {
        let mut by_currency: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for r in rates.values() {
            by_currency
                .entry(r.currency.clone())
                .or_default()
                .push((r.date.clone(), r.usd_per_unit));
        }
        for v in by_currency.values_mut() {
            v.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Rates { by_currency }
    }

    /// USD per unit of `currency` on `date` (ISO): the latest rate dated on or before it, or
    /// the earliest one after it if none is older. `None` if the currency has no rate.
    pub fn usd_per_unit(&self, currency: &str, date: &str) -> Option<f64> {
        if currency == "USD" {
            return Some(1.0);
        }
        let rates = self.by_currency.get(currency)?;
        rates
            .iter()
            .rev()
            .find(|(d, _)| d.as_str() <= date)
            .or_else(|| rates.first())
            .map(|(_, r)| *r)
    }

    /// Whether any rate is known for a currency.
    pub fn knows(&self, currency: &str) -> bool {
        currency == "USD" || self.by_currency.contains_key(currency)
    }

    /// Convert an amount for a year, at the rate of 1 July of that year.
    pub fn usd_for_year(&self, amount: f64, currency: &str, year: i64) -> Option<f64> {
        self.usd_per_unit(currency, &format!("{year:04}-07-01"))
            .map(|r| amount * r)
    }
}

/// A soft rule that does not hold: shown, never refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    /// Which rule, e.g. `released_over_baseline`.
    pub rule: &'static str,
    /// The collection of the entity.
    pub entity: &'static str,
    /// The entity id.
    pub id: String,
    /// What a coordinator reads.
    pub message: String,
}

/// Land released in one year, by method.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReleaseYear {
    /// Calendar year of the date of information.
    pub year: i32,
    /// m² cancelled by non-technical survey.
    pub cancelled_m2: i64,
    /// m² reduced by technical survey.
    pub reduced_m2: i64,
    /// m² cleared.
    pub cleared_m2: i64,
    /// Items destroyed.
    pub items: i64,
}

/// Article 4 progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClearanceProgress {
    /// Released per year, approved entries only.
    pub by_year: Vec<ReleaseYear>,
    /// m² released in all.
    pub released_m2: i64,
    /// Remaining m² in suspected hazardous areas.
    pub remaining_sha_m2: i64,
    /// Remaining m² in confirmed hazardous areas.
    pub remaining_cha_m2: i64,
    /// Hazard areas not yet released.
    pub open_areas: usize,
    /// Items destroyed, by type.
    pub items_by_type: BTreeMap<String, i64>,
    /// Entries awaiting approval.
    pub pending_entries: usize,
    /// m² in entries awaiting approval.
    pub pending_m2: i64,
}

/// Article 3 progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StockpileProgress {
    /// Cluster munitions declared.
    pub declared: i64,
    /// Destroyed, from destruction events.
    pub destroyed: i64,
    /// Retained for training.
    pub retained: i64,
    /// Transferred.
    pub transferred: i64,
    /// Still to destroy.
    pub remaining: i64,
    /// Submunitions declared.
    pub declared_submunitions: i64,
    /// Submunitions destroyed.
    pub destroyed_submunitions: i64,
}

/// Money for one pillar and year, in USD, with the original amounts kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FundingRow {
    /// Pillar.
    pub pillar: Option<Pillar>,
    /// Year.
    pub year: i64,
    /// Needs declared.
    pub needs_usd: f64,
    /// Pledged, announced but not committed.
    pub announced_usd: f64,
    /// Committed and not yet paid.
    pub committed_usd: f64,
    /// Paid.
    pub disbursed_usd: f64,
    /// In-kind offers at their stated value.
    pub in_kind_usd: f64,
    /// needs − (committed + disbursed); negative when over-funded.
    pub gap_usd: f64,
    /// The same figures in their original currencies.
    pub original: BTreeMap<String, OriginalAmounts>,
}

/// Amounts in one original currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OriginalAmounts {
    /// Needs.
    pub needs: f64,
    /// Announced.
    pub announced: f64,
    /// Committed, not yet paid.
    pub committed: f64,
    /// Paid.
    pub disbursed: f64,
}

/// One cell of the donor × pillar × year matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DonorCell {
    /// Donor organisation.
    pub donor: String,
    /// Pillar.
    pub pillar: Pillar,
    /// Year.
    pub year: i64,
    /// Pledged (not cancelled), USD.
    pub pledged_usd: f64,
    /// Paid, USD.
    pub disbursed_usd: f64,
    /// Original currencies and amounts pledged.
    pub original: BTreeMap<String, f64>,
}

/// How a deadline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Nothing remains.
    Completed,
    /// The projection ends before the deadline.
    OnTrack,
    /// The projection ends after the deadline, or nothing was released in 12 months.
    AtRisk,
    /// The deadline has passed with land remaining.
    Overdue,
    /// No deadline is set.
    NoDeadline,
}

/// Article 4 deadline risk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadlineRisk {
    /// m² remaining (SHA + CHA).
    pub remaining_m2: i64,
    /// m² released (approved) in the 12 months up to the report date.
    pub released_last_12_months_m2: i64,
    /// Months to finish at that rate.
    pub months_to_complete: Option<f64>,
    /// The date that gives.
    pub projected_completion: Option<String>,
    /// The deadline in force.
    pub current_deadline: Option<String>,
    /// The verdict.
    pub level: RiskLevel,
}

/// The consolidated report of a coalition.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Coalition id.
    pub coalition: String,
    /// Its name.
    pub name: String,
    /// The affected state.
    pub affected_state: String,
    /// The date the report is computed for.
    pub as_of: String,
    /// Member organisations.
    pub members: usize,
    /// Hazard areas.
    pub hazard_areas: usize,
    /// Land release entries recorded.
    pub release_entries: usize,
    /// Article 4.
    pub clearance: ClearanceProgress,
    /// Article 3.
    pub stockpile: StockpileProgress,
    /// Article 5 aggregates by year.
    pub victim_assistance: Vec<VictimAssistanceYear>,
    /// Funding per pillar and year.
    pub funding: Vec<FundingRow>,
    /// Funding totals per pillar (all years).
    pub funding_by_pillar: Vec<FundingRow>,
    /// Article 4 deadline risk.
    pub deadline_risk: DeadlineRisk,
    /// Donor × pillar × year.
    pub donor_matrix: Vec<DonorCell>,
    /// Soft rules that do not hold.
    pub flags: Vec<Flag>,
}

/// Days after its date of information that an unapproved entry is flagged.
const APPROVAL_GRACE_DAYS: i64 = 30;

impl Report {
    /// Compute the report of a coalition as of a date.
    pub fn build(coalition: &Coalition, as_of: NaiveDate) -> Result<Report, EditError> {
        let state = State::of(coalition)?;
        Ok(Report::from_state(
            coalition.id().to_string(),
            &state,
            as_of,
        ))
    }

    /// Compute the report from a hydrated state.
    pub fn from_state(coalition: String, s: &State, as_of: NaiveDate) -> Report {
        let rates = Rates::new(&s.exchange_rates);
        let mut flags = Vec::new();
        let effective = s.effective_releases();
        let clearance = clearance(s, &effective, &mut flags, as_of);
        let stockpile = stockpile(s, &mut flags);
        let (funding, funding_by_pillar, donor_matrix) = funding(s, &rates, &mut flags);
        let deadline_risk = deadline_risk(s, &effective, &clearance, as_of);
        extension_flags(s, &mut flags);
        let info = s.info.clone();
        Report {
            coalition,
            name: info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
            affected_state: info.map(|i| i.affected_state).unwrap_or_default(),
            as_of: as_of.to_string(),
            members: s.members.len(),
            hazard_areas: s.hazard_areas.len(),
            release_entries: s.releases.len(),
            clearance,
            stockpile,
            victim_assistance: s.victim_assistance.values().cloned().collect(),
            funding,
            funding_by_pillar,
            deadline_risk,
            donor_matrix,
            flags,
        }
    }
}

fn year_of(date: &str) -> i32 {
    NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map(|d| d.year())
        .unwrap_or(0)
}

fn clearance(
    s: &State,
    effective: &BTreeMap<String, &LandReleaseEntry>,
    flags: &mut Vec<Flag>,
    as_of: NaiveDate,
) -> ClearanceProgress {
    let mut p = ClearanceProgress::default();
    let mut by_year: BTreeMap<i32, ReleaseYear> = BTreeMap::new();
    let mut per_area: BTreeMap<&str, i64> = BTreeMap::new();
    for e in effective.values() {
        let y = by_year.entry(year_of(&e.date_of_information)).or_default();
        y.cancelled_m2 += e.cancelled_m2;
        y.reduced_m2 += e.reduced_m2;
        y.cleared_m2 += e.cleared_m2;
        y.items += e.items_total();
        for (kind, n) in &e.items {
            *p.items_by_type.entry(kind.clone()).or_default() += n;
        }
        *per_area.entry(e.area_id.as_str()).or_default() += e.released_m2();
        p.released_m2 += e.released_m2();
    }
    p.by_year = by_year
        .into_iter()
        .map(|(year, mut r)| {
            r.year = year;
            r
        })
        .collect();
    for a in s.hazard_areas.values() {
        let released = per_area.get(a.id.as_str()).copied().unwrap_or(0);
        if released > a.baseline_m2 {
            flags.push(Flag {
                rule: "released_over_baseline",
                entity: keys::HAZARD_AREAS,
                id: a.id.clone(),
                message: format!(
                    "{}: {released} m² released, more than its baseline of {} m²",
                    a.code, a.baseline_m2
                ),
            });
        }
        if a.status == AreaStatus::Released {
            continue;
        }
        let remaining = (a.baseline_m2 - released).max(0);
        if remaining > 0 {
            p.open_areas += 1;
        }
        match a.class {
            HazardClass::Sha => p.remaining_sha_m2 += remaining,
            HazardClass::Cha => p.remaining_cha_m2 += remaining,
        }
    }
    let cutoff = as_of - chrono::Duration::days(APPROVAL_GRACE_DAYS);
    let mut items_per_area: BTreeMap<&str, i64> = BTreeMap::new();
    for e in s.releases.values() {
        if !s.approvals.contains_key(&e.id) {
            p.pending_entries += 1;
            p.pending_m2 += e.released_m2();
            let date = NaiveDate::parse_from_str(&e.date_of_information, "%Y-%m-%d").ok();
            if date.is_some_and(|d| d < cutoff) {
                flags.push(Flag {
                    rule: "unapproved_too_long",
                    entity: keys::RELEASES,
                    id: e.id.clone(),
                    message: format!(
                        "entry of {} by {} has waited more than {APPROVAL_GRACE_DAYS} days for approval",
                        e.date_of_information, e.operator
                    ),
                });
            }
        }
        if e.items_total() > 0 {
            *items_per_area.entry(e.area_id.as_str()).or_default() += e.items_total();
        }
    }
    for (area_id, items) in items_per_area {
        let suspected = s
            .hazard_areas
            .get(area_id)
            .filter(|a| a.class == HazardClass::Sha && a.status != AreaStatus::Released);
        if let Some(a) = suspected {
            flags.push(Flag {
                rule: "items_in_sha",
                entity: keys::HAZARD_AREAS,
                id: a.id.clone(),
                message: format!(
                    "{items} items found in suspected area {}: consider reclassifying it as CHA",
                    a.code
                ),
            });
        }
    }
    p
}

fn stockpile(s: &State, flags: &mut Vec<Flag>) -> StockpileProgress {
    let destroyed = s.destroyed();
    let mut p = StockpileProgress::default();
    for l in s.stockpile.values() {
        let (d, d_sub) = destroyed.get(&l.id).copied().unwrap_or((0, 0));
        p.declared += l.declared;
        p.destroyed += d;
        p.retained += l.retained;
        p.transferred += l.transferred;
        p.declared_submunitions += l.declared_submunitions;
        p.destroyed_submunitions += d_sub;
        if d + l.retained + l.transferred > l.declared {
            flags.push(Flag {
                rule: "stockpile_over_declared",
                entity: keys::STOCKPILE,
                id: l.id.clone(),
                message: format!(
                    "{}: destroyed {d} + retained {} + transferred {} exceed the {} declared",
                    l.munition_type, l.retained, l.transferred, l.declared
                ),
            });
        }
    }
    p.remaining = (p.declared - p.destroyed - p.retained - p.transferred).max(0);
    p
}

type FundingKey = (Pillar, i64);

fn funding(
    s: &State,
    rates: &Rates,
    flags: &mut Vec<Flag>,
) -> (Vec<FundingRow>, Vec<FundingRow>, Vec<DonorCell>) {
    let mut rows: BTreeMap<FundingKey, FundingRow> = BTreeMap::new();
    let mut missing: BTreeSet<String> = BTreeSet::new();
    let add = |rows: &mut BTreeMap<FundingKey, FundingRow>,
               missing: &mut BTreeSet<String>,
               pillar: Pillar,
               year: i64,
               currency: &str,
               amount: f64,
               field: fn(&mut FundingRow) -> &mut f64,
               original: Option<fn(&mut OriginalAmounts) -> &mut f64>| {
        let row = rows.entry((pillar, year)).or_insert_with(|| FundingRow {
            pillar: Some(pillar),
            year,
            ..Default::default()
        });
        match rates.usd_for_year(amount, currency, year) {
            Some(usd) => *field(row) += usd,
            None => {
                missing.insert(currency.to_string());
            }
        }
        if let Some(original) = original {
            *original(row.original.entry(currency.to_string()).or_default()) += amount;
        }
    };

    for n in s.needs.values() {
        for (year, share) in spread(n.amount, n.start_year, n.end_year) {
            add(
                &mut rows,
                &mut missing,
                n.pillar,
                year,
                &n.currency,
                share,
                |r| &mut r.needs_usd,
                Some(|o| &mut o.needs),
            );
        }
    }
    let mut paid: BTreeMap<&str, Vec<&Disbursement>> = BTreeMap::new();
    for d in s.disbursements.values() {
        paid.entry(d.pledge_id.as_str()).or_default().push(d);
    }
    let mut matrix: BTreeMap<(String, Pillar, i64), DonorCell> = BTreeMap::new();
    for p in s.pledges.values() {
        let disbursements = paid.get(p.id.as_str()).cloned().unwrap_or_default();
        let paid_same_currency: i64 = disbursements
            .iter()
            .filter(|d| d.currency == p.currency)
            .map(|d| d.amount)
            .sum();
        for d in &disbursements {
            let year = i64::from(year_of(&d.date));
            add(
                &mut rows,
                &mut missing,
                p.pillar,
                year,
                &d.currency,
                d.amount as f64,
                |r| &mut r.disbursed_usd,
                Some(|o| &mut o.disbursed),
            );
            let cell = matrix
                .entry((p.donor.clone(), p.pillar, year))
                .or_insert_with(|| DonorCell {
                    donor: p.donor.clone(),
                    pillar: p.pillar,
                    year,
                    pledged_usd: 0.0,
                    disbursed_usd: 0.0,
                    original: BTreeMap::new(),
                });
            cell.disbursed_usd += rates
                .usd_for_year(d.amount as f64, &d.currency, year)
                .unwrap_or(0.0);
        }
        if paid_same_currency > p.amount && p.status != PledgeStatus::Cancelled {
            flags.push(Flag {
                rule: "disbursed_over_committed",
                entity: keys::PLEDGES,
                id: p.id.clone(),
                message: format!(
                    "{} disbursed {paid_same_currency} {} against a pledge of {}",
                    p.donor, p.currency, p.amount
                ),
            });
        }
        if p.status == PledgeStatus::Cancelled {
            if p.committed_on.is_some() {
                flags.push(Flag {
                    rule: "cancelled_after_commitment",
                    entity: keys::PLEDGES,
                    id: p.id.clone(),
                    message: format!(
                        "{} cancelled a pledge it had committed on {}",
                        p.donor,
                        p.committed_on.clone().unwrap_or_default()
                    ),
                });
            }
            continue;
        }
        if s.cancel_commit_conflicts.contains(&p.id) {
            flags.push(Flag {
                rule: "cancel_conflicts_with_commitment",
                entity: keys::PLEDGES,
                id: p.id.clone(),
                message: format!("{}'s pledge was cancelled on one device and committed on another; counted as committed until resolved", p.donor),
            });
        }
        let outstanding = if p.status.covers_need() {
            (p.amount - paid_same_currency).max(0)
        } else {
            0
        };
        for (year, share) in spread(p.amount, p.start_year, p.end_year) {
            let cell = matrix
                .entry((p.donor.clone(), p.pillar, year))
                .or_insert_with(|| DonorCell {
                    donor: p.donor.clone(),
                    pillar: p.pillar,
                    year,
                    pledged_usd: 0.0,
                    disbursed_usd: 0.0,
                    original: BTreeMap::new(),
                });
            cell.pledged_usd += rates.usd_for_year(share, &p.currency, year).unwrap_or(0.0);
            *cell.original.entry(p.currency.clone()).or_default() += share;
            if p.status == PledgeStatus::Announced {
                add(
                    &mut rows,
                    &mut missing,
                    p.pillar,
                    year,
                    &p.currency,
                    share,
                    |r| &mut r.announced_usd,
                    Some(|o| &mut o.announced),
                );
            }
        }
        for (year, share) in spread(outstanding, p.start_year, p.end_year) {
            add(
                &mut rows,
                &mut missing,
                p.pillar,
                year,
                &p.currency,
                share,
                |r| &mut r.committed_usd,
                Some(|o| &mut o.committed),
            );
        }
    }
    for o in s.offers.values() {
        add(
            &mut rows,
            &mut missing,
            o.pillar,
            o.year,
            &o.currency,
            o.value as f64,
            |r| &mut r.in_kind_usd,
            None,
        );
    }
    for currency in missing.iter().filter(|c| !rates.knows(c)) {
        flags.push(Flag {
            rule: "missing_exchange_rate",
            entity: keys::EXCHANGE_RATES,
            id: currency.clone(),
            message: format!(
                "no exchange rate for {currency}: its amounts are left out of USD totals"
            ),
        });
    }
    let mut by_pillar: BTreeMap<Pillar, FundingRow> = BTreeMap::new();
    let mut rows: Vec<FundingRow> = rows.into_values().collect();
    for r in rows.iter_mut() {
        r.gap_usd = r.needs_usd - (r.committed_usd + r.disbursed_usd);
        round_row(r);
        let Some(pillar) = r.pillar else { continue };
        let t = by_pillar.entry(pillar).or_insert_with(|| FundingRow {
            pillar: Some(pillar),
            ..Default::default()
        });
        t.needs_usd += r.needs_usd;
        t.announced_usd += r.announced_usd;
        t.committed_usd += r.committed_usd;
        t.disbursed_usd += r.disbursed_usd;
        t.in_kind_usd += r.in_kind_usd;
        t.gap_usd += r.gap_usd;
        for (c, o) in &r.original {
            let to = t.original.entry(c.clone()).or_default();
            to.needs += o.needs;
            to.announced += o.announced;
            to.committed += o.committed;
            to.disbursed += o.disbursed;
        }
    }
    let mut matrix: Vec<DonorCell> = matrix.into_values().collect();
    for c in matrix.iter_mut() {
        c.pledged_usd = c.pledged_usd.round();
        c.disbursed_usd = c.disbursed_usd.round();
    }
    let mut totals: Vec<FundingRow> = by_pillar.into_values().collect();
    totals.iter_mut().for_each(round_row);
    (rows, totals, matrix)
}

fn round_row(r: &mut FundingRow) {
    for v in [
        &mut r.needs_usd,
        &mut r.announced_usd,
        &mut r.committed_usd,
        &mut r.disbursed_usd,
        &mut r.in_kind_usd,
        &mut r.gap_usd,
    ] {
        *v = v.round();
    }
    for o in r.original.values_mut() {
        for v in [
            &mut o.needs,
            &mut o.announced,
            &mut o.committed,
            &mut o.disbursed,
        ] {
            *v = v.round();
        }
    }
}

/// An amount spread evenly over the years of a period.
fn spread(amount: i64, start: i64, end: i64) -> Vec<(i64, f64)> {
    let years = (end - start + 1).max(1);
    (start..=end.max(start))
        .map(|y| (y, amount as f64 / years as f64))
        .collect()
}

fn deadline_risk(
    s: &State,
    effective: &BTreeMap<String, &LandReleaseEntry>,
    clearance: &ClearanceProgress,
    as_of: NaiveDate,
) -> DeadlineRisk {
    let remaining = clearance.remaining_sha_m2 + clearance.remaining_cha_m2;
    let year_ago = as_of.checked_sub_months(Months::new(12)).unwrap_or(as_of);
    let (from, to) = (year_ago.to_string(), as_of.to_string());
    let recent: i64 = effective
        .values()
        .filter(|e| {
            e.date_of_information.as_str() > from.as_str()
                && e.date_of_information.as_str() <= to.as_str()
        })
        .map(|e| e.released_m2())
        .sum();
    let deadline = s.obligations.get(Pillar::Clearance.as_str()).and_then(|o| {
        o.current_deadline
            .clone()
            .or_else(|| o.legal_deadline.clone())
    });
    let months = (recent > 0).then(|| remaining as f64 / recent as f64 * 12.0);
    let projected = months.map(|m| {
        let days = (m * 365.25 / 12.0).ceil() as i64;
        (as_of + chrono::Duration::days(days)).to_string()
    });
    let level = if remaining == 0 {
        RiskLevel::Completed
    } else {
        match &deadline {
            None => RiskLevel::NoDeadline,
            Some(d) if d.as_str() < to.as_str() => RiskLevel::Overdue,
            Some(d) => match &projected {
                Some(p) if p.as_str() <= d.as_str() => RiskLevel::OnTrack,
                _ => RiskLevel::AtRisk,
            },
        }
    };
    DeadlineRisk {
        remaining_m2: remaining,
        released_last_12_months_m2: recent,
        months_to_complete: months.map(|m| (m * 10.0).round() / 10.0),
        projected_completion: projected,
        current_deadline: deadline,
        level,
    }
}

fn extension_flags(s: &State, flags: &mut Vec<Flag>) {
    for r in s.extension_requests.values() {
        let Some(max) = r.pillar.max_extension_years() else {
            continue;
        };
        let (Ok(prev), Ok(req)) = (
            NaiveDate::parse_from_str(&r.previous_deadline, "%Y-%m-%d"),
            NaiveDate::parse_from_str(&r.requested_deadline, "%Y-%m-%d"),
        ) else {
            continue;
        };
        let limit = prev
            .checked_add_months(Months::new(max as u32 * 12))
            .unwrap_or(prev);
        if req > limit {
            flags.push(Flag {
                rule: "extension_too_long",
                entity: keys::EXTENSIONS,
                id: r.id.clone(),
                message: format!(
                    "Article {} extension to {req} is longer than the {max} years the treaty allows from {prev}",
                    r.pillar.article()
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalition::Edit;
    use crate::fixture::{entry, fixture, Fixture, T0};

    fn approve(f: &mut Fixture, id: &str) {
        let nmac = f.nmac.clone();
        let a = Approval {
            entry_id: id.into(),
            decision: Decision::Approved,
            decided_on: "2021-12-01".into(),
            note: None,
        };
        f.c.apply(&nmac, Edit::Approve(a), T0).expect("approve");
    }

    /// A small coalition whose every figure is computed by hand in the assertions below.
    fn small() -> Fixture {
        let mut f = fixture();
        let (op, nmac, donor, coord) = (
            f.operator.clone(),
            f.nmac.clone(),
            f.donor.clone(),
            f.coordinator.clone(),
        );
        let (sha, cha) = (f.sha.clone(), f.cha.clone());
        // SHA 10,000 m²: 4,000 reduced in March 2021.
        f.c.apply(
            &op,
            Edit::RecordRelease(entry("e1", &sha, "NPA", Method::Ts, 4_000, "2021-03-01")),
            T0,
        )
        .expect("e1");
        // CHA 20,000 m²: 5,000 cleared in June 2021 with 3 submunitions, then amended to 4,500.
        let mut e2 = entry("e2", &cha, "NPA", Method::Clearance, 5_000, "2021-06-01");
        e2.items.insert("submunitions".into(), 3);
        f.c.apply(&op, Edit::RecordRelease(e2.clone()), T0)
            .expect("e2");
        let mut e3 = e2.clone();
        e3.id = "e3".into();
        e3.cleared_m2 = 4_500;
        e3.amends = Some("e2".into());
        e3.date_of_information = "2021-06-15".into();
        f.c.apply(&op, Edit::RecordRelease(e3), T0).expect("e3");
        // A 2020 entry of 1,000 m², then voided.
        f.c.apply(
            &op,
            Edit::RecordRelease(entry(
                "e4",
                &cha,
                "NPA",
                Method::Clearance,
                1_000,
                "2020-10-01",
            )),
            T0,
        )
        .expect("e4");
        let mut e5 = entry("e5", &cha, "NPA", Method::Clearance, 0, "2020-10-02");
        e5.voids = Some("e4".into());
        f.c.apply(&op, Edit::RecordRelease(e5), T0).expect("e5");
        // Pending: 700 m², never counted.
        f.c.apply(
            &op,
            Edit::RecordRelease(entry(
                "e6",
                &cha,
                "NPA",
                Method::Clearance,
                700,
                "2021-12-10",
            )),
            T0,
        )
        .expect("e6");
        for id in ["e1", "e2", "e3", "e4", "e5"] {
            approve(&mut f, id);
        }
        // Deadline and money.
        let o = Obligation {
            pillar: Pillar::Clearance,
            legal_deadline: Some("2021-03-01".into()),
            current_deadline: Some("2023-03-01".into()),
            completed_on: None,
        };
        f.c.apply(&nmac, Edit::PutObligation(o), T0)
            .expect("obligation");
        let need = Need {
            id: "n1".into(),
            pillar: Pillar::Clearance,
            title: "Clearance".into(),
            kind: NeedKind::Financial,
            start_year: 2021,
            end_year: 2021,
            amount: 100_000,
            currency: "USD".into(),
            priority: 1,
        };
        f.c.apply(&nmac, Edit::PutNeed(need), T0).expect("need");
        let rate = ExchangeRate {
            currency: "EUR".into(),
            date: "2021-01-01".into(),
            usd_per_unit: 1.2,
            source: "test".into(),
        };
        f.c.apply(&coord, Edit::AddExchangeRate(rate), T0)
            .expect("rate");
        let pledge = |id: &str, amount: i64, currency: &str, status: PledgeStatus| Pledge {
            id: id.into(),
            donor: "donor-DE".into(),
            need_id: Some("n1".into()),
            pillar: Pillar::Clearance,
            amount,
            currency: currency.into(),
            start_year: 2021,
            end_year: 2021,
            channel: "bilateral".into(),
            status,
            committed_on: None,
        };
        f.c.apply(
            &donor,
            Edit::PutPledge(pledge("p1", 50_000, "EUR", PledgeStatus::Committed)),
            T0,
        )
        .expect("p1");
        let d = Disbursement {
            id: "d1".into(),
            pledge_id: "p1".into(),
            amount: 20_000,
            currency: "EUR".into(),
            date: "2021-09-01".into(),
        };
        f.c.apply(&donor, Edit::AddDisbursement(d), T0).expect("d1");
        // CHF has no exchange rate.
        f.c.apply(
            &donor,
            Edit::PutPledge(pledge("p2", 10_000, "CHF", PledgeStatus::Announced)),
            T0,
        )
        .expect("p2");
        // Stockpile: 100 declared, 10 retained, 95 destroyed: over by 5.
        let line = StockpileLine {
            id: "s1".into(),
            munition_type: "KB-1".into(),
            declared: 100,
            declared_submunitions: 1_000,
            retained: 10,
            transferred: 0,
        };
        f.c.apply(&nmac, Edit::PutStockpileLine(line), T0)
            .expect("line");
        let ev = DestructionEvent {
            id: "x1".into(),
            line_id: "s1".into(),
            date: "2012-01-01".into(),
            quantity: 95,
            submunitions: 900,
        };
        f.c.apply(&nmac, Edit::AddDestruction(ev), T0)
            .expect("destroy");
        // An extension of six years where the treaty allows five.
        let ext = ExtensionRequest {
            id: "x2".into(),
            pillar: Pillar::Clearance,
            requested_deadline: "2029-03-02".into(),
            previous_deadline: "2023-03-01".into(),
            submitted_on: "2022-01-10".into(),
            status: ExtensionStatus::Submitted,
            budget: None,
            budget_currency: None,
        };
        f.c.apply(&nmac, Edit::AddExtensionRequest(ext), T0)
            .expect("extension");
        f
    }

    fn as_of() -> NaiveDate {
        NaiveDate::from_ymd_opt(2021, 12, 31).expect("date")
    }

    #[test]
    fn clearance_figures_fold_approved_entries_with_corrections() {
        let f = small();
        let r = Report::build(&f.c, as_of()).expect("report");
        let c = &r.clearance;
        assert_eq!(
            c.released_m2, 8_500,
            "4,000 reduced + 4,500 cleared (amended), the voided 1,000 gone"
        );
        assert_eq!(c.remaining_sha_m2, 6_000);
        assert_eq!(c.remaining_cha_m2, 15_500);
        assert_eq!(c.pending_entries, 1);
        assert_eq!(c.pending_m2, 700);
        assert_eq!(
            c.by_year,
            vec![ReleaseYear {
                year: 2021,
                cancelled_m2: 0,
                reduced_m2: 4_000,
                cleared_m2: 4_500,
                items: 3
            }]
        );
        assert_eq!(c.items_by_type.get("submunitions"), Some(&3));
        assert_eq!(c.open_areas, 2);
    }

    #[test]
    fn deadline_risk_projects_the_last_twelve_months() {
        let f = small();
        let r = Report::build(&f.c, as_of()).expect("report");
        let d = &r.deadline_risk;
        assert_eq!(d.remaining_m2, 21_500);
        assert_eq!(d.released_last_12_months_m2, 8_500);
        // 21,500 / 8,500 × 12 = 30.35 months after 2021-12-31 is mid-2024, after 2023-03-01.
        assert_eq!(d.months_to_complete, Some(30.4));
        assert_eq!(d.projected_completion.as_deref(), Some("2024-07-12"));
        assert_eq!(d.level, RiskLevel::AtRisk);
        let later = Report::build(&f.c, NaiveDate::from_ymd_opt(2023, 6, 1).expect("date"))
            .expect("report");
        assert_eq!(later.deadline_risk.level, RiskLevel::Overdue);
    }

    #[test]
    fn funding_gap_converts_at_dated_rates_and_keeps_original_currencies() {
        let f = small();
        let r = Report::build(&f.c, as_of()).expect("report");
        let row = r
            .funding
            .iter()
            .find(|x| x.pillar == Some(Pillar::Clearance) && x.year == 2021)
            .expect("2021 row");
        assert_eq!(row.needs_usd, 100_000.0);
        // EUR 50,000 committed, EUR 20,000 paid, at 1.2: 36,000 still committed, 24,000 paid.
        assert_eq!(row.committed_usd, 36_000.0);
        assert_eq!(row.disbursed_usd, 24_000.0);
        assert_eq!(row.gap_usd, 40_000.0);
        // CHF 10,000 announced but without a rate: kept in the original amounts, out of USD.
        assert_eq!(row.announced_usd, 0.0);
        assert_eq!(row.original["CHF"].announced, 10_000.0);
        assert_eq!(row.original["EUR"].committed, 30_000.0);
        assert_eq!(row.original["EUR"].disbursed, 20_000.0);
        assert_eq!(row.original["USD"].needs, 100_000.0);
        let cell = r
            .donor_matrix
            .iter()
            .find(|c| c.donor == "donor-DE" && c.year == 2021)
            .expect("cell");
        assert_eq!(cell.pledged_usd, 60_000.0);
        assert_eq!(cell.disbursed_usd, 24_000.0);
        assert_eq!(cell.original["EUR"], 50_000.0);
        assert_eq!(cell.original["CHF"], 10_000.0);
    }

    #[test]
    fn soft_rules_become_flags() {
        let f = small();
        let r = Report::build(&f.c, as_of()).expect("report");
        let rules: Vec<&str> = r.flags.iter().map(|x| x.rule).collect();
        assert!(rules.contains(&"missing_exchange_rate"), "{rules:?}");
        assert!(rules.contains(&"stockpile_over_declared"), "{rules:?}");
        assert!(rules.contains(&"extension_too_long"), "{rules:?}");
        assert!(!rules.contains(&"released_over_baseline"), "{rules:?}");
        assert!(
            !rules.contains(&"unapproved_too_long"),
            "e6 is 21 days old on 2021-12-31: {rules:?}"
        );
        let later = Report::build(&f.c, NaiveDate::from_ymd_opt(2022, 1, 15).expect("date"))
            .expect("report");
        assert!(later
            .flags
            .iter()
            .any(|x| x.rule == "unapproved_too_long" && x.id == "e6"));
        assert_eq!(r.stockpile.remaining, 0);
        assert_eq!(r.stockpile.destroyed, 95);
    }

    #[test]
    fn released_beyond_baseline_and_items_in_sha_are_flagged() {
        let mut f = small();
        let op = f.operator.clone();
        let sha = f.sha.clone();
        let mut e = entry("e9", &sha, "NPA", Method::Ts, 7_000, "2021-07-01");
        e.items.insert("submunitions".into(), 2);
        f.c.apply(&op, Edit::RecordRelease(e), T0).expect("e9");
        approve(&mut f, "e9");
        let r = Report::build(&f.c, as_of()).expect("report");
        assert!(r
            .flags
            .iter()
            .any(|x| x.rule == "released_over_baseline" && x.id == "area-sha"));
        assert!(r
            .flags
            .iter()
            .any(|x| x.rule == "items_in_sha" && x.id == "area-sha"));
        assert_eq!(r.clearance.remaining_sha_m2, 0);
    }

    #[test]
    fn concurrent_cancel_and_commit_counts_as_committed_and_is_flagged() {
        let mut f = small();
        let donor = f.donor.clone();
        let mut laptop = f.c.clone();
        let mut phone_id = donor.clone();
        phone_id.actor = "ee".repeat(16);
        phone_id.device = "phone".into();
        laptop.set_actor(&donor);
        let mut p: Pledge =
            f.c.find_entity(DocKind::Partner, keys::PLEDGES, "p2")
                .expect("read")
                .expect("p2");
        p.status = PledgeStatus::Committed;
        f.c.apply(&donor, Edit::PutPledge(p.clone()), T0 + 10)
            .expect("commit");
        p.status = PledgeStatus::Cancelled;
        laptop
            .apply(&phone_id, Edit::PutPledge(p), T0 + 20)
            .expect("cancel");
        f.c.merge(&mut laptop).expect("merge");
        let state = State::of(&f.c).expect("state");
        assert_eq!(state.pledges["p2"].status, PledgeStatus::Committed);
        let r = Report::from_state(String::new(), &state, as_of());
        assert!(r
            .flags
            .iter()
            .any(|x| x.rule == "cancel_conflicts_with_commitment" && x.id == "p2"));
        let listed = conflicts(&mut f.c).expect("conflicts");
        assert!(listed
            .iter()
            .any(|c| c.id == "p2" && c.field == "status" && c.values.len() == 2));
    }

    #[test]
    fn concurrent_decisions_on_one_entry_are_a_conflict_on_the_whole_record() {
        let mut f = small();
        let nmac = f.nmac.clone();
        let mut tablet = f.c.clone();
        let mut other = nmac.clone();
        other.actor = "dd".repeat(16);
        other.device = "tablet-2".into();
        tablet.set_actor(&other);
        let decide = |decision| Approval {
            entry_id: "e6".into(),
            decision,
            decided_on: "2021-12-20".into(),
            note: None,
        };
        f.c.apply(&nmac, Edit::Approve(decide(Decision::Approved)), T0 + 5)
            .expect("approve");
        tablet
            .apply(&other, Edit::Approve(decide(Decision::Rejected)), T0 + 6)
            .expect("reject");
        f.c.merge(&mut tablet).expect("merge");
        let listed = conflicts(&mut f.c).expect("conflicts");
        let c = listed
            .iter()
            .find(|c| c.collection == keys::APPROVALS)
            .expect("approval conflict");
        assert_eq!((c.id.as_str(), c.field.as_str()), ("e6", WHOLE_ENTITY));
        let mut decisions: Vec<(&str, &str)> = c
            .values
            .iter()
            .map(|v| {
                (
                    v.value["decision"].as_str().unwrap_or_default(),
                    v.device.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        decisions.sort();
        assert_eq!(
            decisions,
            vec![("approved", "nina-device"), ("rejected", "tablet-2")]
        );
    }

    #[test]
    fn article7_forms_are_drafted_from_the_report() {
        let f = small();
        let state = State::of(&f.c).expect("state");
        let r = Report::from_state(String::new(), &state, as_of());
        let forms = Article7::draft(&state, &r, as_of());
        assert_eq!(
            forms.form_f.remaining_sha_m2 + forms.form_f.remaining_cha_m2,
            21_500
        );
        assert_eq!(forms.form_f.areas.len(), 2);
        assert_eq!(forms.form_i.lines.len(), 2);
        let md = forms.to_markdown();
        assert!(md.contains("## Form F"), "{md}");
        assert!(
            md.contains("| HA-2 | HA-2 field | Tuzla | CHA | 20000 | 15500 | active |"),
            "{md}"
        );
        assert!(md.contains("| 2021 | 0 | 4000 | 4500 | 3 |"), "{md}");
    }
}
