//! The coalition's entities as they are stored in Automerge documents.
//!
//! Each struct here is one entity of `DOMAIN.md`, kept as a map under a collection key of one
//! document (`hazard_areas/<id>`, `pledges/<id>`, ...). They are written with autosurgeon's
//! `reconcile`, which only writes the fields that changed: two devices that edit different
//! fields of one hazard area both keep their edit, and two devices that write the same field
//! leave a conflict that the consolidated view shows.
//!
//! Money is kept in whole units of its original ISO 4217 currency; areas in integer square
//! metres; dates as ISO 8601 strings (`YYYY-MM-DD`), which sort as they read.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use autosurgeon::{Hydrate, HydrateError, Reconcile, Reconciler};
use serde::{Deserialize, Serialize};

/// Defines a closed set of names kept in documents as plain strings.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name kept in documents and shown to users.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownName {
                        kind: stringify!($name),
                        found: other.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }

        impl Hydrate for $name {
            fn hydrate_string(s: &str) -> Result<Self, HydrateError> {
                s.parse().map_err(|e: UnknownName| HydrateError::unexpected(stringify!($name), e.found))
            }
        }

        impl Reconcile for $name {
            type Key<'a> = autosurgeon::reconcile::NoKey;
            fn reconcile<R: Reconciler>(&self, mut reconciler: R) -> Result<(), R::Error> {
                reconciler.str(self.as_str())
            }
        }
    };
}

/// A name that is not one of a closed set (a role, a method, a status...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a valid {kind}; expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    /// The kind of name that was expected.
    pub kind: &'static str,
    /// What was given.
    pub found: String,
    /// The accepted names.
    pub expected: &'static [&'static str],
}

string_enum! {
    /// What a member organisation is.
    OrgKind {
        /// The affected state's government (ministries).
        AffectedState = "affected_state",
        /// The national mine action centre.
        Nmac = "nmac",
        /// A donor state or institution.
        Donor = "donor",
        /// An expertise partner (people, training, equipment).
        Expertise = "expertise",
        /// A survey and clearance operator.
        Operator = "operator",
        /// An observer, e.g. a civil society coalition.
        Observer = "observer",
        /// The organisation that coordinates the coalition.
        Coordinator = "coordinator",
    }
}

string_enum! {
    /// What a member may do; an organisation may hold several roles.
    Role {
        /// Sets membership, exchange rates, resolves conflicts; writes the narrative.
        Coordinator = "coordinator",
        /// Mine action centre or ministry: the plan, hazard areas, tasks, approvals, needs.
        Nmac = "nmac",
        /// Its own pledges and disbursements.
        Donor = "donor",
        /// Its own in-kind offers.
        Expertise = "expertise",
        /// Its own land release entries and task progress.
        Operator = "operator",
        /// Reads and comments.
        Observer = "observer",
    }
}

impl OrgKind {
    /// The role an organisation of this kind holds by default.
    pub fn default_role(self) -> Role {
        match self {
            OrgKind::AffectedState | OrgKind::Nmac => Role::Nmac,
            OrgKind::Donor => Role::Donor,
            OrgKind::Expertise => Role::Expertise,
            OrgKind::Operator => Role::Operator,
            OrgKind::Observer => Role::Observer,
            OrgKind::Coordinator => Role::Coordinator,
        }
    }
}

string_enum! {
    /// The treaty obligations a coalition plans for.
    Pillar {
        /// Article 3: stockpile destruction.
        Stockpile = "stockpile",
        /// Article 4: clearance of contaminated land and risk reduction education.
        Clearance = "clearance",
        /// Article 5: victim assistance.
        VictimAssistance = "victim_assistance",
        /// Article 6: international cooperation and assistance.
        Cooperation = "cooperation",
        /// Article 7: transparency reporting.
        Transparency = "transparency",
    }
}

impl Pillar {
    /// The article of the Convention on Cluster Munitions.
    pub fn article(self) -> u8 {
        match self {
            Pillar::Stockpile => 3,
            Pillar::Clearance => 4,
            Pillar::VictimAssistance => 5,
            Pillar::Cooperation => 6,
            Pillar::Transparency => 7,
        }
    }

    /// The longest single extension the treaty allows, in years (Art 3: 4, Art 4: 5).
    pub fn max_extension_years(self) -> Option<i32> {
        match self {
            Pillar::Stockpile => Some(4),
            Pillar::Clearance => Some(5),
            _ => None,
        }
    }
}

string_enum! {
    /// Where a state stands towards the Convention.
    TreatyStatus {
        /// Ratified or acceded.
        StateParty = "state_party",
        /// Signed, not ratified.
        Signatory = "signatory",
        /// Neither signed nor acceded.
        NonSignatory = "non_signatory",
        /// Cannot join (e.g. Kosovo) and reports voluntarily.
        VoluntaryReporting = "voluntary_reporting",
    }
}

string_enum! {
    /// The evidence behind a hazard area.
    HazardClass {
        /// Suspected hazardous area: indirect evidence.
        Sha = "sha",
        /// Confirmed hazardous area: direct evidence.
        Cha = "cha",
    }
}

string_enum! {
    /// Where a hazard area stands.
    AreaStatus {
        /// Recorded, no work started.
        Active = "active",
        /// A task is working on it.
        InProgress = "in_progress",
        /// Completely released.
        Released = "released",
    }
}

string_enum! {
    /// How land is worked.
    Method {
        /// Non-technical survey: releases land as cancelled.
        Nts = "nts",
        /// Technical survey: releases land as reduced.
        Ts = "ts",
        /// Clearance to a depth: releases land as cleared.
        Clearance = "clearance",
        /// Explosive ordnance disposal spot task: destroys items, releases no area.
        Eod = "eod",
    }
}

string_enum! {
    /// Where a task stands, as its operator reports it.
    TaskStatus {
        /// Assigned, not started.
        Planned = "planned",
        /// Teams are on site.
        Ongoing = "ongoing",
        /// Halted (weather, access, funding).
        Suspended = "suspended",
        /// Finished.
        Completed = "completed",
    }
}

string_enum! {
    /// The mine action centre's decision on a land release entry.
    Decision {
        /// Folded into the consolidated figures.
        Approved = "approved",
        /// Kept, never counted.
        Rejected = "rejected",
    }
}

string_enum! {
    /// Where a pledge stands. Status only moves forward: announced, committed, disbursed; a
    /// pledge can be cancelled before it is disbursed.
    PledgeStatus {
        /// Said in public; not yet a commitment.
        Announced = "announced",
        /// A signed commitment.
        Committed = "committed",
        /// Paid out.
        Disbursed = "disbursed",
        /// Withdrawn.
        Cancelled = "cancelled",
    }
}

impl PledgeStatus {
    /// Position on the forward path; cancelled is off the path.
    pub fn rank(self) -> Option<u8> {
        match self {
            PledgeStatus::Announced => Some(0),
            PledgeStatus::Committed => Some(1),
            PledgeStatus::Disbursed => Some(2),
            PledgeStatus::Cancelled => None,
        }
    }

    /// Whether a pledge may move from `self` to `next` on one device.
    pub fn may_become(self, next: PledgeStatus) -> bool {
        match (self.rank(), next.rank()) {
            (Some(a), Some(b)) => b >= a,
            (Some(a), None) => a < 2,
            (None, None) => true,
            (None, Some(_)) => false,
        }
    }

    /// Whether money under this status covers a need (committed or paid).
    pub fn covers_need(self) -> bool {
        matches!(self, PledgeStatus::Committed | PledgeStatus::Disbursed)
    }
}

string_enum! {
    /// What a need asks for.
    NeedKind {
        /// Money.
        Financial = "financial",
        /// Equipment (detectors, vehicles, protective gear).
        Equipment = "equipment",
        /// Specialist expertise.
        Expertise = "expertise",
        /// Training of national staff.
        Training = "training",
    }
}

string_enum! {
    /// Where an extension request stands.
    ExtensionStatus {
        /// Submitted to the Meeting of States Parties.
        Submitted = "submitted",
        /// Granted: the obligation's current deadline moves.
        Granted = "granted",
        /// Refused or withdrawn.
        Refused = "refused",
    }
}

string_enum! {
    /// What a comment is.
    CommentKind {
        /// A remark.
        Comment = "comment",
        /// A note from the field.
        FieldNote = "field_note",
        /// A decision taken at a meeting.
        Decision = "decision",
    }
}

string_enum! {
    /// The narrative sections of the plan, kept as collaborative text.
    Section {
        /// Summary of the plan.
        Summary = "summary",
        /// Challenges.
        Challenges = "challenges",
        /// Resource mobilisation strategy.
        ResourceMobilisation = "resource_mobilisation",
        /// Risk reduction education (Article 7 form G).
        RiskEducation = "risk_education",
    }
}

string_enum! {
    /// The kinds of document a coalition is split into, along ownership lines.
    DocKind {
        /// Coalition, membership, the document list, exchange rates: the coordinator's.
        Manifest = "manifest",
        /// Obligations, hazard areas, tasks, approvals, stockpile, victim assistance, needs,
        /// narrative: the mine action centre's and ministry's.
        Plan = "plan",
        /// One donor's or expertise partner's pledges, disbursements and offers.
        Partner = "partner",
        /// One operator's land release entries and task progress.
        Operator = "operator",
        /// Comments, field notes and decisions of every member.
        Comments = "comments",
    }
}

/// The coalition itself, in the manifest (coordinator; LWW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct CoalitionInfo {
    /// Display name, e.g. "Bosnia and Herzegovina CCM coalition".
    pub name: String,
    /// ISO 3166-1 alpha-2 of the affected state (or `XK`).
    pub affected_state: String,
    /// The state's treaty status.
    pub treaty_status: TreatyStatus,
    /// Date the Convention entered into force for the state.
    pub entry_into_force: Option<String>,
}

/// A member organisation (coordinator; add-wins set keyed by organisation id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Member {
    /// Short stable id of the organisation, e.g. `BHMAC`, `donor-DE`, `NPA`.
    pub org: String,
    /// Full name.
    pub name: String,
    /// What the organisation is.
    pub kind: OrgKind,
    /// The roles it holds; kept as a map so that concurrent grants both survive.
    pub roles: BTreeMap<String, bool>,
    /// ISO 3166 code of a donor state, where it is one.
    pub country: Option<String>,
}

impl Member {
    /// The roles this member holds.
    pub fn role_set(&self) -> Vec<Role> {
        self.roles
            .iter()
            .filter(|(_, on)| **on)
            .filter_map(|(r, _)| r.parse().ok())
            .collect()
    }
}

/// One document of the coalition, listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct DocEntry {
    /// What the document holds.
    pub kind: DocKind,
    /// The organisation that owns a partner or operator document.
    pub owner: Option<String>,
}

/// An exchange rate (coordinator; append-only keyed by currency and date).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct ExchangeRate {
    /// ISO 4217 code.
    pub currency: String,
    /// Date the rate applies from.
    pub date: String,
    /// Units of USD for one unit of the currency.
    pub usd_per_unit: f64,
    /// Where the rate comes from.
    pub source: String,
}

impl ExchangeRate {
    /// The key under which a rate is kept: one rate per currency and date.
    pub fn key(&self) -> String {
        format!("{}:{}", self.currency, self.date)
    }
}

/// A treaty obligation (NMAC / ministry; LWW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Obligation {
    /// Which article.
    pub pillar: Pillar,
    /// The deadline the treaty sets.
    pub legal_deadline: Option<String>,
    /// The deadline in force after granted extensions.
    pub current_deadline: Option<String>,
    /// When the obligation was declared complete.
    pub completed_on: Option<String>,
}

/// A request to extend a deadline (NMAC / ministry; append-only, its status LWW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct ExtensionRequest {
    /// Entity id.
    pub id: String,
    /// Which article.
    pub pillar: Pillar,
    /// The deadline asked for.
    pub requested_deadline: String,
    /// The deadline in force when the request was made.
    pub previous_deadline: String,
    /// Date of submission.
    pub submitted_on: String,
    /// Where it stands.
    pub status: ExtensionStatus,
    /// Budget attached to the request, whole units.
    pub budget: Option<i64>,
    /// Currency of the budget.
    pub budget_currency: Option<String>,
}

/// A hazard area (NMAC; LWW per field, concurrent writes shown as conflicts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct HazardArea {
    /// Entity id.
    pub id: String,
    /// Display code, e.g. `BA-HA-0042`.
    pub code: String,
    /// Name of the place.
    pub name: String,
    /// Municipality or other administrative area.
    pub admin_area: String,
    /// GeoJSON Polygon or MultiPolygon, WGS84.
    pub geometry: String,
    /// SHA or CHA.
    pub class: HazardClass,
    /// Baseline area in m²; re-baselining keeps the old value in `baselines`.
    pub baseline_m2: i64,
    /// Hazard types, e.g. `submunitions`, `ap_mines`, `uxo`.
    pub hazard_types: Vec<String>,
    /// 1 (highest) to 5.
    pub priority: i64,
    /// Where it stands.
    pub status: AreaStatus,
}

/// A record of a hazard area's baseline changing (append-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Rebaseline {
    /// Entity id.
    pub id: String,
    /// The hazard area.
    pub area_id: String,
    /// Baseline before.
    pub previous_m2: i64,
    /// Baseline after.
    pub baseline_m2: i64,
    /// Date of the decision.
    pub date: String,
    /// Why.
    pub reason: String,
}

/// A task assigned to an operator (NMAC assigns; LWW per field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Task {
    /// Entity id.
    pub id: String,
    /// Display code.
    pub code: String,
    /// The hazard area worked.
    pub area_id: String,
    /// The operator organisation.
    pub operator: String,
    /// How the land is worked.
    pub method: Method,
    /// Planned start date.
    pub planned_start: Option<String>,
    /// Planned end date.
    pub planned_end: Option<String>,
}

/// Progress on a task, as its operator reports it (operator; LWW per field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct TaskProgress {
    /// The task.
    pub task_id: String,
    /// Where it stands.
    pub status: TaskStatus,
    /// Actual start date.
    pub actual_start: Option<String>,
    /// Actual end date.
    pub actual_end: Option<String>,
}

/// A land release entry: an immutable field report (operator).
///
/// Corrections are new entries that amend (replace the figures of) or void another entry.
/// Totals are always derived by folding approved entries in date-of-information order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct LandReleaseEntry {
    /// Entity id.
    pub id: String,
    /// The hazard area.
    pub area_id: String,
    /// The task, where the work was tasked.
    pub task_id: Option<String>,
    /// The operator organisation.
    pub operator: String,
    /// How the land was worked.
    pub method: Method,
    /// m² released by non-technical survey.
    pub cancelled_m2: i64,
    /// m² released by technical survey.
    pub reduced_m2: i64,
    /// m² released by clearance.
    pub cleared_m2: i64,
    /// Items destroyed by type (`submunitions`, `ap_mines`, `uxo`...).
    pub items: BTreeMap<String, i64>,
    /// The date the information refers to.
    pub date_of_information: String,
    /// A point or short description of where.
    pub location: Option<String>,
    /// The entry this one replaces.
    pub amends: Option<String>,
    /// The entry this one voids.
    pub voids: Option<String>,
    /// Why a correction was made.
    pub reason: Option<String>,
}

impl LandReleaseEntry {
    /// Total m² released by this entry.
    pub fn released_m2(&self) -> i64 {
        self.cancelled_m2 + self.reduced_m2 + self.cleared_m2
    }

    /// Total items destroyed.
    pub fn items_total(&self) -> i64 {
        self.items.values().sum()
    }
}

/// The mine action centre's decision on a land release entry (NMAC; LWW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Approval {
    /// The entry decided on.
    pub entry_id: String,
    /// The decision.
    pub decision: Decision,
    /// Date of the decision.
    pub decided_on: String,
    /// Why, if rejected.
    pub note: Option<String>,
}

/// A stockpile line (ministry of defence; LWW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct StockpileLine {
    /// Entity id.
    pub id: String,
    /// Munition type, e.g. `KB-1 (M87 Orkan)`.
    pub munition_type: String,
    /// Cluster munitions declared.
    pub declared: i64,
    /// Submunitions they contain.
    pub declared_submunitions: i64,
    /// Retained for training (Article 3.6).
    pub retained: i64,
    /// Transferred for destruction or training.
    pub transferred: i64,
}

/// A destruction event of a stockpile line (append-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct DestructionEvent {
    /// Entity id.
    pub id: String,
    /// The stockpile line.
    pub line_id: String,
    /// Date.
    pub date: String,
    /// Cluster munitions destroyed.
    pub quantity: i64,
    /// Submunitions destroyed.
    pub submunitions: i64,
}

/// Victim assistance aggregates for one year (VA focal point; LWW per cell). Never personal data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct VictimAssistanceYear {
    /// Calendar year.
    pub year: i64,
    /// New casualties killed.
    pub killed: Option<i64>,
    /// New casualties injured.
    pub injured: Option<i64>,
    /// Known survivors alive.
    pub survivors: Option<i64>,
    /// Survivors who received assistance.
    pub assisted: Option<i64>,
}

/// A need declared by the affected state (LWW per field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Need {
    /// Entity id.
    pub id: String,
    /// Which article.
    pub pillar: Pillar,
    /// Short description.
    pub title: String,
    /// What is needed.
    pub kind: NeedKind,
    /// First year.
    pub start_year: i64,
    /// Last year (inclusive).
    pub end_year: i64,
    /// Amount in whole units of `currency`, spread evenly over the years.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// 1 (highest) to 5.
    pub priority: i64,
}

/// A pledge (that donor only; LWW; status only moves forward).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Pledge {
    /// Entity id.
    pub id: String,
    /// The donor organisation.
    pub donor: String,
    /// The need it answers, if any.
    pub need_id: Option<String>,
    /// Which article.
    pub pillar: Pillar,
    /// Amount in whole units of `currency`, spread evenly over the years.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// First year.
    pub start_year: i64,
    /// Last year (inclusive).
    pub end_year: i64,
    /// Through whom the money goes (`bilateral`, `NPA`, `ITF`...).
    pub channel: String,
    /// Where it stands.
    pub status: PledgeStatus,
    /// When it became a commitment, if it did.
    pub committed_on: Option<String>,
}

/// A disbursement of a pledge (append-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Disbursement {
    /// Entity id.
    pub id: String,
    /// The pledge.
    pub pledge_id: String,
    /// Amount in whole units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Date paid.
    pub date: String,
}

/// An in-kind offer by an expertise partner (LWW).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct InKindOffer {
    /// Entity id.
    pub id: String,
    /// The partner organisation.
    pub partner: String,
    /// The need it answers, if any.
    pub need_id: Option<String>,
    /// Which article.
    pub pillar: Pillar,
    /// What is offered.
    pub expertise: String,
    /// Person-days.
    pub person_days: i64,
    /// Value in whole units of `currency`.
    pub value: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Year.
    pub year: i64,
}

/// A comment, field note or meeting decision (every member; append-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Hydrate, Reconcile)]
pub struct Comment {
    /// Entity id.
    pub id: String,
    /// What it is.
    pub kind: CommentKind,
    /// The entity it is about, if any.
    pub about: Option<String>,
    /// The text.
    pub text: String,
    /// Author's organisation.
    pub org: String,
    /// Author.
    pub user: String,
    /// Unix time in seconds.
    pub at: i64,
}

/// Collection keys, one per entity kind, and the document each lives in.
pub mod keys {
    /// Manifest: the coalition.
    pub const COALITION: &str = "coalition";
    /// Manifest: member organisations.
    pub const MEMBERS: &str = "members";
    /// Manifest: the coalition's documents.
    pub const DOCUMENTS: &str = "documents";
    /// Manifest: exchange rates.
    pub const EXCHANGE_RATES: &str = "exchange_rates";
    /// Plan: obligations per pillar.
    pub const OBLIGATIONS: &str = "obligations";
    /// Plan: extension requests.
    pub const EXTENSIONS: &str = "extension_requests";
    /// Plan: hazard areas.
    pub const HAZARD_AREAS: &str = "hazard_areas";
    /// Plan: re-baselining history.
    pub const REBASELINES: &str = "rebaselines";
    /// Plan: tasks.
    pub const TASKS: &str = "tasks";
    /// Plan: approvals keyed by entry id.
    pub const APPROVALS: &str = "approvals";
    /// Plan: stockpile lines.
    pub const STOCKPILE: &str = "stockpile";
    /// Plan: destruction events.
    pub const DESTRUCTIONS: &str = "destruction_events";
    /// Plan: victim assistance per year.
    pub const VICTIM_ASSISTANCE: &str = "victim_assistance";
    /// Plan: needs.
    pub const NEEDS: &str = "needs";
    /// Plan: narrative sections (text objects).
    pub const NARRATIVE: &str = "narrative";
    /// Partner: pledges.
    pub const PLEDGES: &str = "pledges";
    /// Partner: disbursements.
    pub const DISBURSEMENTS: &str = "disbursements";
    /// Partner: in-kind offers.
    pub const OFFERS: &str = "offers";
    /// Operator: land release entries.
    pub const RELEASES: &str = "releases";
    /// Operator: task progress.
    pub const TASK_PROGRESS: &str = "task_progress";
    /// Comments: comments.
    pub const COMMENTS: &str = "comments";
}

/// Whether a collection holds records: entities that are written once (or replaced whole,
/// last writer wins) and never edited field by field. Each is kept as one immutable JSON
/// string: per-field registers would only invite the field edits records must not have, and
/// a plan with thousands of entries loads and reads several times faster.
pub fn is_record(collection: &str) -> bool {
    use keys::*;
    matches!(
        collection,
        RELEASES
            | APPROVALS
            | DISBURSEMENTS
            | DESTRUCTIONS
            | REBASELINES
            | COMMENTS
            | EXCHANGE_RATES
    )
}

/// The collections each document kind holds.
pub fn collections(kind: DocKind) -> &'static [&'static str] {
    use keys::*;
    match kind {
        DocKind::Manifest => &[MEMBERS, DOCUMENTS, EXCHANGE_RATES],
        DocKind::Plan => &[
            OBLIGATIONS,
            EXTENSIONS,
            HAZARD_AREAS,
            REBASELINES,
            TASKS,
            APPROVALS,
            STOCKPILE,
            DESTRUCTIONS,
            VICTIM_ASSISTANCE,
            NEEDS,
            NARRATIVE,
        ],
        DocKind::Partner => &[PLEDGES, DISBURSEMENTS, OFFERS],
        DocKind::Operator => &[RELEASES, TASK_PROGRESS],
        DocKind::Comments => &[COMMENTS],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pledge_status_only_moves_forward() {
        use PledgeStatus::*;
        assert!(Announced.may_become(Committed));
        assert!(Committed.may_become(Disbursed));
        assert!(Committed.may_become(Cancelled));
        assert!(!Committed.may_become(Announced));
        assert!(!Disbursed.may_become(Committed));
        assert!(!Disbursed.may_become(Cancelled));
        assert!(!Cancelled.may_become(Announced));
    }

    #[test]
    fn unknown_names_list_what_is_accepted() {
        let err = "clear".parse::<Method>().expect_err("not a method");
        assert_eq!(
            err.to_string(),
            "`clear` is not a valid Method; expected one of: nts, ts, clearance, eod"
        );
    }
}
