//! The values that cross the FFI boundary: records (plain structs, copied), enums, and the
//! conversions from and to the core's model.
//!
//! The core's types stay free of UniFFI; what an app needs is mirrored here. Figures an app
//! does not show directly are not modelled one by one: [`CoalitionReport::json`] carries the
//! whole report, and `CoalitionClient::state_json` every entity.

use std::collections::HashMap;

use coalition_core::model;
use coalition_core::report::{self, RiskLevel};
use coalition_core::transport;

/// Declares an enum of the API that mirrors a closed set of the core's model, and the
/// conversions both ways (exhaustive, so a new core variant is a compile error here).
macro_rules! mirror_enum {
    ($(#[$meta:meta])* $name:ident => $core:path {
        $($(#[$vmeta:meta])* $variant:ident),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl From<$name> for $core {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => Self::$variant),+
                }
            }
        }

        impl From<$core> for $name {
            fn from(v: $core) -> Self {
                type Core = $core;
                match v {
                    $(Core::$variant => $name::$variant),+
                }
            }
        }
    };
}

mirror_enum! {
    /// How land was worked; decides which figure of a land release entry may be non-zero.
    ReleaseMethod => model::Method {
        /// Non-technical survey: releases land as cancelled.
        Nts,
        /// Technical survey: releases land as reduced.
        Ts,
        /// Clearance: releases land as cleared.
        Clearance,
        /// Explosive ordnance disposal spot task: destroys items, releases no area.
        Eod,
    }
}

mirror_enum! {
    /// The evidence behind a hazard area.
    HazardClass => model::HazardClass {
        /// Suspected hazardous area.
        Sha,
        /// Confirmed hazardous area.
        Cha,
    }
}

mirror_enum! {
    /// Where a hazard area stands.
    AreaStatus => model::AreaStatus {
        /// Recorded, no work started.
        Active,
        /// A task is working on it.
        InProgress,
        /// Completely released.
        Released,
    }
}

mirror_enum! {
    /// The treaty obligations a coalition plans for.
    Pillar => model::Pillar {
        /// Article 3: stockpile destruction.
        Stockpile,
        /// Article 4: clearance and risk reduction education.
        Clearance,
        /// Article 5: victim assistance.
        VictimAssistance,
        /// Article 6: international cooperation and assistance.
        Cooperation,
        /// Article 7: transparency reporting.
        Transparency,
    }
}

mirror_enum! {
    /// Where a pledge stands: announced, committed, disbursed (only forward), or cancelled
    /// before it is disbursed.
    PledgeStatus => model::PledgeStatus {
        /// Said in public; not yet a commitment.
        Announced,
        /// A signed commitment.
        Committed,
        /// Paid out.
        Disbursed,
        /// Withdrawn.
        Cancelled,
    }
}

mirror_enum! {
    /// The mine action centre's decision on a land release entry.
    Decision => model::Decision {
        /// Counted in the consolidated figures.
        Approved,
        /// Kept, never counted.
        Rejected,
    }
}

mirror_enum! {
    /// What a comment is.
    CommentKind => model::CommentKind {
        /// A remark.
        Comment,
        /// A note from the field.
        FieldNote,
        /// A decision taken at a meeting.
        Decision,
    }
}

mirror_enum! {
    /// The narrative sections of the plan (collaborative text).
    NarrativeSection => model::Section {
        /// Summary of the plan.
        Summary,
        /// Challenges.
        Challenges,
        /// Resource mobilisation strategy.
        ResourceMobilisation,
        /// Risk reduction education (Article 7 form G).
        RiskEducation,
    }
}

mirror_enum! {
    /// Where a task stands, as its operator reports it.
    TaskStatus => model::TaskStatus {
        /// Assigned, not started.
        Planned,
        /// Teams are on site.
        Ongoing,
        /// Halted (weather, access, funding).
        Suspended,
        /// Finished.
        Completed,
    }
}

/// How the Article 4 deadline stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum DeadlineLevel {
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

impl From<RiskLevel> for DeadlineLevel {
    fn from(level: RiskLevel) -> Self {
        match level {
            RiskLevel::Completed => DeadlineLevel::Completed,
            RiskLevel::OnTrack => DeadlineLevel::OnTrack,
            RiskLevel::AtRisk => DeadlineLevel::AtRisk,
            RiskLevel::Overdue => DeadlineLevel::Overdue,
            RiskLevel::NoDeadline => DeadlineLevel::NoDeadline,
        }
    }
}

/// Who uses this device.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceIdentity {
    /// The person.
    pub user: String,
    /// The person's organisation (its member id, e.g. `BHMAC`).
    pub org: String,
    /// The device's name.
    pub device: String,
    /// The device's Automerge actor id (hex): every change this device makes carries it.
    pub actor: String,
}

impl From<coalition_core::Identity> for DeviceIdentity {
    fn from(i: coalition_core::Identity) -> Self {
        DeviceIdentity {
            user: i.user,
            org: i.org,
            device: i.device,
            actor: i.actor,
        }
    }
}

/// What enrollment set up.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Enrollment {
    /// The relay's base URL.
    pub server: String,
    /// Who uses this device now.
    pub identity: DeviceIdentity,
    /// The device's id at the relay.
    pub device_id: String,
    /// The role the invite granted (`nmac`, `operator`, `donor`...).
    pub role: String,
    /// The coalitions this device syncs; `sync_now` fetches them.
    pub coalitions: Vec<String>,
}

impl From<transport::Enrolled> for Enrollment {
    fn from(e: transport::Enrolled) -> Self {
        Enrollment {
            server: e.server,
            identity: e.identity.into(),
            device_id: e.device_id,
            role: e.role,
            coalitions: e.coalitions.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A coalition this device holds or syncs.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CoalitionSummary {
    /// The coalition id (its manifest document id): pass it to every other call.
    pub id: String,
    /// Its name; absent until its documents arrived.
    pub name: Option<String>,
    /// The affected state (ISO 3166-1 alpha-2, or `XK`).
    pub affected_state: Option<String>,
    /// Documents of it on this device (0 before the first sync).
    pub documents: i64,
    /// Whether this device syncs it with the relay.
    pub synced: bool,
}

/// The device's sync status, read from the store without the network.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceStatus {
    /// Whether a credential is stored.
    pub enrolled: bool,
    /// The relay's URL.
    pub server: Option<String>,
    /// The device's id at the relay.
    pub device_id: Option<String>,
    /// The role the invite granted.
    pub role: Option<String>,
    /// Who uses the device.
    pub identity: Option<DeviceIdentity>,
    /// When a sync last completed (RFC 3339).
    pub last_sync: Option<String>,
    /// The last sync error, with its time.
    pub last_error: Option<String>,
    /// Documents with changes not known to be on the relay: show it before the user goes
    /// offline.
    pub unsent_documents: i64,
    /// Changes of this device the relay refused, kept on the device: show them with why.
    pub refused_changes: Vec<RefusedChange>,
}

/// A change the relay refused; the device keeps it aside (never deleted) until a coordinator
/// accepts it on the relay, when it comes back through sync.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RefusedChange {
    /// The change hash, hex.
    pub hash: String,
    /// The document it was made to.
    pub document_id: String,
    /// What it did, from its commit message, when it says.
    pub summary: Option<String>,
    /// Why the relay refused it.
    pub reason: String,
    /// When it was set aside (unix seconds).
    pub at: i64,
}

impl From<transport::DeviceStatus> for DeviceStatus {
    fn from(s: transport::DeviceStatus) -> Self {
        DeviceStatus {
            enrolled: s.enrolled,
            server: s.server,
            device_id: s.device_id,
            role: s.role,
            identity: s.identity.map(Into::into),
            last_sync: s.last_sync,
            last_error: s.last_error,
            unsent_documents: count(s.unsent_documents),
            refused_changes: s
                .refused
                .into_iter()
                .map(|h| RefusedChange {
                    hash: h.hash,
                    document_id: h.doc_id,
                    summary: h.summary,
                    reason: h.reason,
                    at: h.held_at,
                })
                .collect(),
        }
    }
}

/// A soft rule that does not hold: shown, never refused.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReportFlag {
    /// Which rule, e.g. `released_over_baseline`.
    pub rule: String,
    /// The collection of the entity.
    pub entity: String,
    /// The entity id.
    pub id: String,
    /// What a coordinator reads.
    pub message: String,
}

/// The key figures of a coalition's consolidated report. Every figure is derived from the
/// documents on this device; two devices with the same documents give the same report.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CoalitionReport {
    /// Coalition id.
    pub coalition_id: String,
    /// Its name.
    pub name: String,
    /// The affected state.
    pub affected_state: String,
    /// The date the report is computed for (`YYYY-MM-DD`).
    pub as_of: String,
    /// Member organisations.
    pub members: i64,
    /// Hazard areas.
    pub hazard_areas: i64,
    /// Land release entries recorded (approved or not).
    pub release_entries: i64,
    /// m² released in all (approved entries, corrections applied).
    pub released_m2: i64,
    /// m² remaining in suspected hazardous areas.
    pub remaining_sha_m2: i64,
    /// m² remaining in confirmed hazardous areas.
    pub remaining_cha_m2: i64,
    /// Hazard areas not yet released.
    pub open_areas: i64,
    /// Land release entries awaiting approval.
    pub pending_entries: i64,
    /// m² in entries awaiting approval.
    pub pending_m2: i64,
    /// Items destroyed (all types).
    pub items_destroyed: i64,
    /// Cluster munitions declared in stockpile.
    pub stockpile_declared: i64,
    /// Cluster munitions destroyed.
    pub stockpile_destroyed: i64,
    /// Cluster munitions still to destroy.
    pub stockpile_remaining: i64,
    /// Needs declared, all pillars and years, USD.
    pub needs_usd: f64,
    /// Committed and not yet paid, USD.
    pub committed_usd: f64,
    /// Paid, USD.
    pub disbursed_usd: f64,
    /// Needs minus committed and paid, USD (negative when over-funded).
    pub gap_usd: f64,
    /// How the Article 4 deadline stands.
    pub deadline_level: DeadlineLevel,
    /// The Article 4 deadline in force.
    pub current_deadline: Option<String>,
    /// When clearance would end at the last 12 months' rate.
    pub projected_completion: Option<String>,
    /// Soft rules that do not hold.
    pub flags: Vec<ReportFlag>,
    /// The whole report as JSON (funding per pillar and year, donor matrix, releases per
    /// year, victim assistance...): for what the fields above do not model.
    pub json: String,
}

impl CoalitionReport {
    /// The key figures of a report, and the report as JSON.
    pub(crate) fn of(r: &report::Report) -> Result<Self, serde_json::Error> {
        let json = serde_json::to_string(r)?;
        let totals = |f: fn(&report::FundingRow) -> f64| r.funding_by_pillar.iter().map(f).sum();
        Ok(CoalitionReport {
            coalition_id: r.coalition.clone(),
            name: r.name.clone(),
            affected_state: r.affected_state.clone(),
            as_of: r.as_of.clone(),
            members: count(r.members),
            hazard_areas: count(r.hazard_areas),
            release_entries: count(r.release_entries),
            released_m2: r.clearance.released_m2,
            remaining_sha_m2: r.clearance.remaining_sha_m2,
            remaining_cha_m2: r.clearance.remaining_cha_m2,
            open_areas: count(r.clearance.open_areas),
            pending_entries: count(r.clearance.pending_entries),
            pending_m2: r.clearance.pending_m2,
            items_destroyed: r.clearance.items_by_type.values().sum(),
            stockpile_declared: r.stockpile.declared,
            stockpile_destroyed: r.stockpile.destroyed,
            stockpile_remaining: r.stockpile.remaining,
            needs_usd: totals(|f| f.needs_usd),
            committed_usd: totals(|f| f.committed_usd),
            disbursed_usd: totals(|f| f.disbursed_usd),
            gap_usd: totals(|f| f.gap_usd),
            deadline_level: r.deadline_risk.level.into(),
            current_deadline: r.deadline_risk.current_deadline.clone(),
            projected_completion: r.deadline_risk.projected_completion.clone(),
            flags: r
                .flags
                .iter()
                .map(|f| ReportFlag {
                    rule: f.rule.to_owned(),
                    entity: f.entity.to_owned(),
                    id: f.id.clone(),
                    message: f.message.clone(),
                })
                .collect(),
            json,
        })
    }
}

/// One concurrent value of a conflicting field.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConflictValue {
    /// The value, as JSON.
    pub value_json: String,
    /// The author's organisation, if the change says.
    pub org: Option<String>,
    /// The author.
    pub user: Option<String>,
    /// The device.
    pub device: Option<String>,
    /// Unix time of the change, seconds.
    pub time: i64,
    /// The change hash.
    pub change: String,
}

/// A field that devices wrote concurrently with different values; writing it again resolves
/// it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Conflict {
    /// The document id.
    pub doc_id: String,
    /// The document kind (`plan`, `operator`...).
    pub doc_kind: String,
    /// The collection (`hazard_areas`, `pledges`...).
    pub collection: String,
    /// The entity id.
    pub entity_id: String,
    /// The field, or `*` for a whole entity written concurrently.
    pub field: String,
    /// Every value, the one shown now first.
    pub values: Vec<ConflictValue>,
}

impl From<report::Conflict> for Conflict {
    fn from(c: report::Conflict) -> Self {
        Conflict {
            doc_id: c.doc,
            doc_kind: c.doc_kind.to_string(),
            collection: c.collection,
            entity_id: c.id,
            field: c.field,
            values: c
                .values
                .into_iter()
                .map(|v| ConflictValue {
                    value_json: v.value.to_string(),
                    org: v.org,
                    user: v.user,
                    device: v.device,
                    time: v.time,
                    change: v.change,
                })
                .collect(),
        }
    }
}

/// Which changes `history` lists; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct HistoryFilter {
    /// Only this entity id.
    #[uniffi(default = None)]
    pub entity_id: Option<String>,
    /// Only this organisation.
    #[uniffi(default = None)]
    pub org: Option<String>,
    /// Only this person.
    #[uniffi(default = None)]
    pub user: Option<String>,
    /// Only this entity kind (collection, e.g. `hazard_areas`).
    #[uniffi(default = None)]
    pub entity: Option<String>,
    /// Only changes at or after this unix time (seconds).
    #[uniffi(default = None)]
    pub since: Option<i64>,
    /// Only changes at or before this unix time (seconds).
    #[uniffi(default = None)]
    pub until: Option<i64>,
    /// Only the last this many changes.
    #[uniffi(default = None)]
    pub last: Option<u32>,
}

impl From<&HistoryFilter> for report::HistoryFilter {
    fn from(f: &HistoryFilter) -> Self {
        report::HistoryFilter {
            entity_id: f.entity_id.clone(),
            org: f.org.clone(),
            user: f.user.clone(),
            entity: f.entity.clone(),
            since: f.since,
            until: f.until,
        }
    }
}

/// One change: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryEntry {
    /// Unix time, seconds.
    pub time: i64,
    /// The document kind.
    pub doc_kind: String,
    /// The document id.
    pub doc_id: String,
    /// The organisation.
    pub org: Option<String>,
    /// The person.
    pub user: Option<String>,
    /// The device.
    pub device: Option<String>,
    /// The Automerge actor, hex.
    pub actor: String,
    /// What was done (`put`, `record`, `approve`...).
    pub action: Option<String>,
    /// The entity kind (collection).
    pub entity: Option<String>,
    /// The entity id.
    pub entity_id: Option<String>,
    /// The fields written.
    pub fields: Vec<String>,
    /// The change hash.
    pub change: String,
}

impl From<report::HistoryEntry> for HistoryEntry {
    fn from(h: report::HistoryEntry) -> Self {
        HistoryEntry {
            time: h.time,
            doc_kind: h.doc_kind.to_string(),
            doc_id: h.doc,
            org: h.org,
            user: h.user,
            device: h.device,
            actor: h.actor,
            action: h.action,
            entity: h.entity,
            entity_id: h.id,
            fields: h.fields,
            change: h.change,
        }
    }
}

/// The figures of a land release entry, as an operator reports them from the field. The
/// operator is the user's organisation.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LandReleaseInput {
    /// The hazard area worked.
    pub area_id: String,
    /// The task, where the work was tasked.
    #[uniffi(default = None)]
    pub task_id: Option<String>,
    /// How the land was worked: decides which of the three figures may be non-zero.
    pub method: ReleaseMethod,
    /// m² released by non-technical survey (method `Nts` only).
    pub cancelled_m2: i64,
    /// m² released by technical survey (method `Ts` only).
    pub reduced_m2: i64,
    /// m² released by clearance (method `Clearance` only).
    pub cleared_m2: i64,
    /// Items destroyed by type (`submunitions`, `ap_mines`, `uxo`...).
    pub items: HashMap<String, i64>,
    /// The date the information refers to (`YYYY-MM-DD`).
    pub date_of_information: String,
    /// A point or short description of where.
    #[uniffi(default = None)]
    pub location: Option<String>,
}

/// A land release entry with its approval, as the plan holds it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LandReleaseEntry {
    /// Entity id.
    pub id: String,
    /// The operator organisation.
    pub operator: String,
    /// The figures.
    pub figures: LandReleaseInput,
    /// The entry this one corrects.
    pub amends: Option<String>,
    /// The entry this one voids.
    pub voids: Option<String>,
    /// Why a correction was made.
    pub reason: Option<String>,
    /// The mine action centre's decision; absent while pending.
    pub decision: Option<Decision>,
    /// Why it was rejected, if it was.
    pub decision_note: Option<String>,
}

impl LandReleaseEntry {
    /// An entry of the model with its approval, if any.
    pub(crate) fn of(e: &model::LandReleaseEntry, approval: Option<&model::Approval>) -> Self {
        LandReleaseEntry {
            id: e.id.clone(),
            operator: e.operator.clone(),
            figures: LandReleaseInput {
                area_id: e.area_id.clone(),
                task_id: e.task_id.clone(),
                method: e.method.into(),
                cancelled_m2: e.cancelled_m2,
                reduced_m2: e.reduced_m2,
                cleared_m2: e.cleared_m2,
                items: e.items.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                date_of_information: e.date_of_information.clone(),
                location: e.location.clone(),
            },
            amends: e.amends.clone(),
            voids: e.voids.clone(),
            reason: e.reason.clone(),
            decision: approval.map(|a| a.decision.into()),
            decision_note: approval.and_then(|a| a.note.clone()),
        }
    }
}

/// A new hazard area (mine action centre).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HazardAreaInput {
    /// Display code, e.g. `BA-HA-0042`.
    pub code: String,
    /// Name of the place.
    pub name: String,
    /// Municipality or other administrative area.
    pub admin_area: String,
    /// GeoJSON Polygon or MultiPolygon, WGS84, as text.
    pub geometry: String,
    /// SHA or CHA.
    pub hazard_class: HazardClass,
    /// Baseline area in m².
    pub baseline_m2: i64,
    /// Hazard types, e.g. `submunitions`, `uxo`.
    pub hazard_types: Vec<String>,
    /// 1 (highest) to 5.
    pub priority: i64,
    /// Where it stands.
    pub status: AreaStatus,
}

/// Changes to a hazard area: only the fields given are written, so two devices editing
/// different fields both keep their edit. The baseline changes through
/// `rebaseline_hazard_area`, which keeps the old one.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct HazardAreaChanges {
    /// New display code.
    #[uniffi(default = None)]
    pub code: Option<String>,
    /// New name.
    #[uniffi(default = None)]
    pub name: Option<String>,
    /// New administrative area.
    #[uniffi(default = None)]
    pub admin_area: Option<String>,
    /// New GeoJSON geometry.
    #[uniffi(default = None)]
    pub geometry: Option<String>,
    /// New class.
    #[uniffi(default = None)]
    pub hazard_class: Option<HazardClass>,
    /// New hazard types (replacing the list).
    #[uniffi(default = None)]
    pub hazard_types: Option<Vec<String>>,
    /// New priority, 1 to 5.
    #[uniffi(default = None)]
    pub priority: Option<i64>,
    /// New status.
    #[uniffi(default = None)]
    pub status: Option<AreaStatus>,
}

/// A hazard area as the plan holds it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HazardArea {
    /// Entity id.
    pub id: String,
    /// Its fields.
    pub fields: HazardAreaInput,
}

impl From<&model::HazardArea> for HazardArea {
    fn from(a: &model::HazardArea) -> Self {
        HazardArea {
            id: a.id.clone(),
            fields: HazardAreaInput {
                code: a.code.clone(),
                name: a.name.clone(),
                admin_area: a.admin_area.clone(),
                geometry: a.geometry.clone(),
                hazard_class: a.class.into(),
                baseline_m2: a.baseline_m2,
                hazard_types: a.hazard_types.clone(),
                priority: a.priority,
                status: a.status.into(),
            },
        }
    }
}

/// A new pledge of the user's organisation (a donor).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PledgeInput {
    /// The need it answers, if any.
    #[uniffi(default = None)]
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
    /// Where it stands (usually `Announced` or `Committed`).
    pub status: PledgeStatus,
}

/// A pledge as the coalition holds it, with the status merging settled on.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Pledge {
    /// Entity id.
    pub id: String,
    /// The donor organisation.
    pub donor: String,
    /// Its fields.
    pub fields: PledgeInput,
    /// When it became a commitment.
    pub committed_on: Option<String>,
}

impl From<&model::Pledge> for Pledge {
    fn from(p: &model::Pledge) -> Self {
        Pledge {
            id: p.id.clone(),
            donor: p.donor.clone(),
            fields: PledgeInput {
                need_id: p.need_id.clone(),
                pillar: p.pillar.into(),
                amount: p.amount,
                currency: p.currency.clone(),
                start_year: p.start_year,
                end_year: p.end_year,
                channel: p.channel.clone(),
                status: p.status.into(),
            },
            committed_on: p.committed_on.clone(),
        }
    }
}

/// A document changed: refresh what shows it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DocumentChange {
    /// The coalition the document belongs to, when the device knows.
    pub coalition_id: Option<String>,
    /// The document.
    pub document_id: String,
    /// Its kind (`plan`, `operator`, `partner`, `manifest`, `comments`), when known.
    pub kind: Option<String>,
    /// Its owner organisation (operator and partner documents).
    pub owner: Option<String>,
    /// Changes that arrived (0 for a local edit).
    pub changes: i64,
    /// Who made them (`user (org)`).
    pub authors: Vec<String>,
    /// True when the changes came from the relay, false for an edit made on this device.
    pub remote: bool,
}

/// Where background sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncState {
    /// Connecting to the relay.
    Connecting,
    /// Connected; documents are being exchanged.
    Connected,
    /// Every document is answered and the link is quiet.
    InSync,
    /// The link dropped or the relay cannot be reached; retrying by itself.
    Offline,
    /// Background sync stopped (asked to, or after a failure reported just before).
    Stopped,
    /// Background sync cannot continue (credential refused, not enrolled, store failure);
    /// `detail` says why. Local work is kept.
    Failed,
}

/// A change of the sync status.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncStatus {
    /// Where sync stands.
    pub state: SyncState,
    /// Documents with changes not yet on the relay, when known.
    pub unsent_documents: Option<i64>,
    /// With `Offline`: when the next attempt is, in milliseconds.
    pub retry_in_ms: Option<i64>,
    /// Why, for `Offline` and `Failed` (the same message a sync call would have failed
    /// with); a warning otherwise.
    pub detail: Option<String>,
}

/// What one `sync_now` did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncSummary {
    /// Documents synced with the relay.
    pub documents: i64,
    /// Documents that received changes from the relay.
    pub received_documents: Vec<String>,
    /// Documents whose local changes are still not on the relay.
    pub unsent_documents: Vec<String>,
    /// Documents the relay does not have or will not give to this device.
    pub unavailable_documents: Vec<String>,
    /// Bytes sent.
    pub bytes_sent: i64,
    /// Bytes received.
    pub bytes_received: i64,
    /// Bytes on the wire both ways, over QUIC: what a metered link bills (headers,
    /// acknowledgements, retransmissions included; frames as they went, deflated or not).
    /// None over WebSocket.
    pub wire_bytes: Option<i64>,
    /// Problems that did not stop the sync.
    pub warnings: Vec<String>,
}

impl From<&transport::SyncSummary> for SyncSummary {
    fn from(s: &transport::SyncSummary) -> Self {
        let ids = |set: &mut dyn Iterator<Item = &coalition_core::sync::DocumentId>| {
            set.map(ToString::to_string).collect::<Vec<_>>()
        };
        SyncSummary {
            documents: count(s.documents),
            received_documents: ids(&mut s.stats.received.iter()),
            unsent_documents: ids(&mut s.unsent.iter()),
            unavailable_documents: ids(&mut s.stats.unavailable.iter()),
            bytes_sent: i64::try_from(s.stats.bytes_sent).unwrap_or(i64::MAX),
            bytes_received: i64::try_from(s.stats.bytes_received).unwrap_or(i64::MAX),
            wire_bytes: s.wire_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            warnings: s.stats.warnings.clone(),
        }
    }
}

/// A count as the API's integer type (Kotlin and Swift apps work with signed 64-bit).
pub(crate) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
