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
pub use conflicts::{conflicts, Conflict, ConflictValue};
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
