//! Command-line arguments of `coalition`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use coalition_core::model::*;
use coalition_core::transport::{Congestion, Transport};

/// Coalition Sync: keep a country coalition's plan on this device, offline.
#[derive(Parser, Debug)]
#[command(name = "coalition", version, about)]
pub struct Cli {
    /// The local store directory.
    #[arg(
        long,
        env = "COALITION_STORE",
        global = true,
        default_value = "coalition-store"
    )]
    pub store: PathBuf,
    /// The coalition to work on (id or automerge: URL); needed when the store holds several.
    #[arg(long, global = true)]
    pub coalition: Option<String>,
    /// Print JSON instead of text (read commands and edit confirmations).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Set up who uses this device: person, organisation and device name.
    Init {
        /// The person.
        #[arg(long)]
        user: String,
        /// The organisation (its member id, e.g. BHMAC, NPA, donor-DE).
        #[arg(long)]
        org: String,
        /// This device's name.
        #[arg(long)]
        device: String,
    },
    /// Show this device's identity and roles.
    Whoami,
    /// Create a coalition for an affected state; your organisation becomes its coordinator.
    Create(CreateArgs),
    /// List the coalitions on this device.
    List,
    /// Member organisations.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Add a dated exchange rate (coordinator).
    Rate(RateArgs),
    /// Set an obligation's deadlines (NMAC).
    Obligation(ObligationArgs),
    /// Extension requests (NMAC).
    #[command(subcommand)]
    Extension(ExtensionCmd),
    /// Hazard areas (NMAC).
    #[command(subcommand)]
    Area(AreaCmd),
    /// Tasks (NMAC assigns, operators report progress).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Land release entries (operators).
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Approve or reject a land release entry (NMAC).
    Approve(ApproveArgs),
    /// Stockpile lines and destruction events (ministry).
    #[command(subcommand)]
    Stockpile(StockpileCmd),
    /// Set a year's victim assistance aggregates.
    Va(VaArgs),
    /// Needs (affected state).
    #[command(subcommand)]
    Need(NeedCmd),
    /// Pledges and disbursements (donors).
    #[command(subcommand)]
    Pledge(PledgeCmd),
    /// In-kind offers (expertise partners).
    #[command(subcommand)]
    Offer(OfferCmd),
    /// Rewrite a narrative section (ministry, coordinator).
    Narrative(NarrativeArgs),
    /// Comment, field note or meeting decision (every member).
    Comment(CommentArgs),
    /// Read the comments.
    Comments,
    /// The consolidated report.
    Report(AsOfArgs),
    /// Fields edited concurrently with different values.
    Conflicts,
    /// Who changed what, when.
    History(HistoryArgs),
    /// The plan as it was at a past date.
    At(AtArgs),
    /// Draft Article 7 forms F–I.
    Article7(Article7Args),
    /// Write the coalition's documents to a file for another device.
    Export {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge a file exported by another device.
    Import {
        /// The file to read.
        file: PathBuf,
    },
    /// Build the demo coalition (Bosnia and Herzegovina) in the store and print its report.
    Demo {
        /// Also set this device up as the given demo organisation's first person.
        #[arg(long, default_value = "MCA-BA")]
        as_org: String,
    },
    /// Fold stored increments into snapshots.
    Compact,
    /// Enroll this device with an invite from a coordinator.
    Enroll(EnrollArgs),
    /// Sync with the relay: once (default) or staying connected (--watch).
    Sync(SyncArgs),
    /// Relay, device, last sync, and documents with changes not yet on the relay.
    Status,
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The relay, e.g. `https://relay.example.org` or `http://127.0.0.1:8080`.
    #[arg(long, env = "COALITION_SERVER")]
    pub server: String,
    /// The invite code.
    #[arg(long)]
    pub invite: String,
    /// This device's name (default: the stored one, else the host name).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Use this relay for this run instead of the one stored at enrollment.
    #[arg(long, env = "COALITION_SERVER")]
    pub server: Option<String>,
    /// Stay connected: apply remote changes live, push local edits, reconnect when the link
    /// drops; Ctrl-C stops.
    #[arg(long)]
    pub watch: bool,
    /// Give up waiting for the relay's answers after this many seconds (one-off sync).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// auto (QUIC when the relay's invite gave a pin and UDP gets through, else WebSocket),
    /// quic or websocket.
    #[arg(long, default_value = "auto", env = "COALITION_TRANSPORT")]
    pub transport: Transport,
    /// QUIC congestion controller: cubic (default), bbr or newreno.
    #[arg(long, default_value = "cubic")]
    pub congestion: Congestion,
    /// Stop before moving more than this many bytes (metered links); smallest changes go
    /// first, the rest next time.
    #[arg(long)]
    pub budget: Option<u64>,
    /// While watching over WebSocket, try QUIC again every this many seconds.
    #[arg(long, default_value_t = 60)]
    pub quic_retry: u64,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Affected state, ISO 3166-1 alpha-2 (or XK).
    #[arg(long)]
    pub state: String,
    /// Coalition name.
    #[arg(long)]
    pub name: String,
    /// Your organisation's full name.
    #[arg(long)]
    pub org_name: String,
    /// What your organisation is.
    #[arg(long, default_value = "affected_state")]
    pub kind: OrgKind,
    /// The state's treaty status.
    #[arg(long, default_value = "state_party")]
    pub treaty: TreatyStatus,
    /// Date of entry into force for the state.
    #[arg(long)]
    pub entry_into_force: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Add a member organisation or change its roles (coordinator).
    Add {
        /// Member id, e.g. NPA, donor-DE.
        #[arg(long)]
        org: String,
        /// Full name.
        #[arg(long)]
        name: String,
        /// What it is.
        #[arg(long)]
        kind: OrgKind,
        /// Roles (default: the kind's role).
        #[arg(long = "role")]
        roles: Vec<Role>,
        /// ISO 3166 code of a donor state.
        #[arg(long)]
        country: Option<String>,
    },
    /// Remove a member (coordinator).
    Remove {
        /// Member id.
        #[arg(long)]
        org: String,
    },
    /// List members.
    List,
}

#[derive(Args, Debug)]
pub struct RateArgs {
    /// ISO 4217 code.
    #[arg(long)]
    pub currency: String,
    /// Date the rate applies from.
    #[arg(long)]
    pub date: String,
    /// USD per unit.
    #[arg(long)]
    pub usd: f64,
    /// Source of the rate.
    #[arg(long, default_value = "manual")]
    pub source: String,
}

#[derive(Args, Debug)]
pub struct ObligationArgs {
    /// Pillar.
    #[arg(long)]
    pub pillar: Pillar,
    /// Legal deadline.
    #[arg(long)]
    pub legal: Option<String>,
    /// Deadline in force.
    #[arg(long)]
    pub current: Option<String>,
    /// Completion date.
    #[arg(long)]
    pub completed: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ExtensionCmd {
    /// File a request.
    Add {
        /// Pillar.
        #[arg(long)]
        pillar: Pillar,
        /// Deadline asked for.
        #[arg(long)]
        requested: String,
        /// Deadline in force.
        #[arg(long)]
        previous: String,
        /// Submission date.
        #[arg(long)]
        submitted: String,
        /// Budget.
        #[arg(long)]
        budget: Option<i64>,
        /// Budget currency.
        #[arg(long)]
        currency: Option<String>,
    },
    /// Record the decision.
    Decide {
        /// Request id.
        #[arg(long)]
        id: String,
        /// Decision.
        #[arg(long)]
        status: ExtensionStatus,
    },
}

#[derive(Args, Debug, Default)]
pub struct AreaFields {
    /// Display code, e.g. BA-HA-0042.
    #[arg(long)]
    pub code: Option<String>,
    /// Name.
    #[arg(long)]
    pub name: Option<String>,
    /// Administrative area.
    #[arg(long)]
    pub admin_area: Option<String>,
    /// GeoJSON Polygon/MultiPolygon: inline, or @FILE.
    #[arg(long)]
    pub geometry: Option<String>,
    /// sha or cha.
    #[arg(long)]
    pub class: Option<HazardClass>,
    /// Baseline m² (use `area rebaseline` to change it later).
    #[arg(long)]
    pub baseline: Option<i64>,
    /// Hazard type (repeat).
    #[arg(long = "hazard-type")]
    pub hazard_types: Vec<String>,
    /// Priority 1-5.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Status.
    #[arg(long)]
    pub status: Option<AreaStatus>,
}

#[derive(Subcommand, Debug)]
pub enum AreaCmd {
    /// Add a hazard area.
    Add(AreaFields),
    /// Edit fields of a hazard area.
    Edit {
        /// Area id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        fields: AreaFields,
    },
    /// Change the baseline, keeping the old one.
    Rebaseline {
        /// Area id.
        #[arg(long)]
        id: String,
        /// New baseline m².
        #[arg(long)]
        baseline: i64,
        /// Decision date.
        #[arg(long)]
        date: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List hazard areas.
    List,
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Assign a task.
    Add {
        /// Hazard area id.
        #[arg(long)]
        area: String,
        /// Operator member id.
        #[arg(long)]
        operator: String,
        /// Method.
        #[arg(long)]
        method: Method,
        /// Display code.
        #[arg(long)]
        code: Option<String>,
        /// Planned start.
        #[arg(long)]
        start: Option<String>,
        /// Planned end.
        #[arg(long)]
        end: Option<String>,
    },
    /// Edit a task (NMAC).
    Edit {
        /// Task id.
        #[arg(long)]
        id: String,
        /// Operator member id.
        #[arg(long)]
        operator: Option<String>,
        /// Method.
        #[arg(long)]
        method: Option<Method>,
        /// Display code.
        #[arg(long)]
        code: Option<String>,
        /// Planned start.
        #[arg(long)]
        start: Option<String>,
        /// Planned end.
        #[arg(long)]
        end: Option<String>,
    },
    /// Report progress on your task (operator).
    Progress {
        /// Task id.
        #[arg(long)]
        task: String,
        /// Status.
        #[arg(long)]
        status: TaskStatus,
        /// Actual start.
        #[arg(long)]
        started: Option<String>,
        /// Actual end.
        #[arg(long)]
        ended: Option<String>,
    },
    /// List tasks.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCmd {
    /// Record a land release entry.
    Record(Box<ReleaseArgs>),
    /// List entries.
    List {
        /// Only those awaiting approval.
        #[arg(long)]
        pending: bool,
    },
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Hazard area id.
    #[arg(long)]
    pub area: String,
    /// Task id.
    #[arg(long)]
    pub task: Option<String>,
    /// Method.
    #[arg(long)]
    pub method: Method,
    /// m² cancelled (NTS).
    #[arg(long, default_value_t = 0)]
    pub cancelled: i64,
    /// m² reduced (TS).
    #[arg(long, default_value_t = 0)]
    pub reduced: i64,
    /// m² cleared.
    #[arg(long, default_value_t = 0)]
    pub cleared: i64,
    /// Items destroyed, TYPE=COUNT (repeat).
    #[arg(long = "item")]
    pub items: Vec<String>,
    /// Date of information.
    #[arg(long)]
    pub date: String,
    /// Where.
    #[arg(long)]
    pub location: Option<String>,
    /// The entry this one corrects.
    #[arg(long)]
    pub amends: Option<String>,
    /// The entry this one voids.
    #[arg(long)]
    pub voids: Option<String>,
    /// Why a correction.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct ApproveArgs {
    /// Entry id.
    #[arg(long)]
    pub entry: String,
    /// Reject instead.
    #[arg(long)]
    pub reject: bool,
    /// Note.
    #[arg(long)]
    pub note: Option<String>,
    /// Decision date (default today).
    #[arg(long)]
    pub date: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum StockpileCmd {
    /// Add a stockpile line.
    Add {
        /// Munition type.
        #[arg(long = "type")]
        munition_type: String,
        /// Declared.
        #[arg(long)]
        declared: i64,
        /// Submunitions.
        #[arg(long, default_value_t = 0)]
        submunitions: i64,
        /// Retained for training.
        #[arg(long, default_value_t = 0)]
        retained: i64,
        /// Transferred.
        #[arg(long, default_value_t = 0)]
        transferred: i64,
    },
    /// Edit a stockpile line.
    Edit {
        /// Line id.
        #[arg(long)]
        id: String,
        /// Munition type.
        #[arg(long = "type")]
        munition_type: Option<String>,
        /// Declared.
        #[arg(long)]
        declared: Option<i64>,
        /// Submunitions.
        #[arg(long)]
        submunitions: Option<i64>,
        /// Retained for training.
        #[arg(long)]
        retained: Option<i64>,
        /// Transferred.
        #[arg(long)]
        transferred: Option<i64>,
    },
    /// Record a destruction event.
    Destroy {
        /// Line id.
        #[arg(long)]
        line: String,
        /// Date.
        #[arg(long)]
        date: String,
        /// Munitions destroyed.
        #[arg(long)]
        quantity: i64,
        /// Submunitions destroyed.
        #[arg(long, default_value_t = 0)]
        submunitions: i64,
    },
}

#[derive(Args, Debug)]
pub struct VaArgs {
    /// Year.
    #[arg(long)]
    pub year: i64,
    /// Killed.
    #[arg(long)]
    pub killed: Option<i64>,
    /// Injured.
    #[arg(long)]
    pub injured: Option<i64>,
    /// Known survivors.
    #[arg(long)]
    pub survivors: Option<i64>,
    /// Survivors assisted.
    #[arg(long)]
    pub assisted: Option<i64>,
}

#[derive(Args, Debug, Default)]
pub struct NeedFields {
    /// Pillar.
    #[arg(long)]
    pub pillar: Option<Pillar>,
    /// Title.
    #[arg(long)]
    pub title: Option<String>,
    /// Kind.
    #[arg(long)]
    pub kind: Option<NeedKind>,
    /// First year.
    #[arg(long)]
    pub from: Option<i64>,
    /// Last year.
    #[arg(long)]
    pub to: Option<i64>,
    /// Amount, whole units.
    #[arg(long)]
    pub amount: Option<i64>,
    /// ISO 4217.
    #[arg(long)]
    pub currency: Option<String>,
    /// Priority 1-5.
    #[arg(long)]
    pub priority: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum NeedCmd {
    /// Add a need.
    Add(NeedFields),
    /// Edit a need.
    Edit {
        /// Need id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        fields: NeedFields,
    },
    /// List needs.
    List,
}

#[derive(Subcommand, Debug)]
pub enum PledgeCmd {
    /// Pledge, as your organisation.
    Add {
        /// Amount, whole units.
        #[arg(long)]
        amount: i64,
        /// ISO 4217.
        #[arg(long)]
        currency: String,
        /// Pillar.
        #[arg(long)]
        pillar: Pillar,
        /// First year.
        #[arg(long)]
        from: i64,
        /// Last year.
        #[arg(long)]
        to: i64,
        /// The need it answers.
        #[arg(long)]
        need: Option<String>,
        /// Channel.
        #[arg(long, default_value = "bilateral")]
        channel: String,
        /// Initial status.
        #[arg(long, default_value = "announced")]
        status: PledgeStatus,
    },
    /// Edit a pledge's terms (your own).
    Edit {
        /// Pledge id.
        #[arg(long)]
        id: String,
        /// Amount, whole units.
        #[arg(long)]
        amount: Option<i64>,
        /// ISO 4217.
        #[arg(long)]
        currency: Option<String>,
        /// Pillar.
        #[arg(long)]
        pillar: Option<Pillar>,
        /// First year.
        #[arg(long)]
        from: Option<i64>,
        /// Last year.
        #[arg(long)]
        to: Option<i64>,
        /// The need it answers.
        #[arg(long)]
        need: Option<String>,
        /// Channel.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Move a pledge forward (committed, disbursed) or cancel it.
    Status {
        /// Pledge id.
        #[arg(long)]
        id: String,
        /// New status.
        #[arg(long)]
        status: PledgeStatus,
        /// Date of the commitment.
        #[arg(long)]
        date: Option<String>,
    },
    /// Record a disbursement.
    Disburse {
        /// Pledge id.
        #[arg(long)]
        id: String,
        /// Amount.
        #[arg(long)]
        amount: i64,
        /// ISO 4217 (default: the pledge's).
        #[arg(long)]
        currency: Option<String>,
        /// Date paid.
        #[arg(long)]
        date: String,
    },
    /// List pledges.
    List,
}

#[derive(Subcommand, Debug)]
pub enum OfferCmd {
    /// Record an offer.
    Add(OfferArgs),
    /// Edit one of your offers.
    Edit {
        /// Offer id.
        #[arg(long)]
        id: String,
        /// What is offered.
        #[arg(long)]
        expertise: Option<String>,
        /// Person-days.
        #[arg(long)]
        days: Option<i64>,
        /// Value.
        #[arg(long)]
        value: Option<i64>,
        /// ISO 4217.
        #[arg(long)]
        currency: Option<String>,
        /// Year.
        #[arg(long)]
        year: Option<i64>,
    },
    /// List offers.
    List,
}

#[derive(Args, Debug)]
pub struct OfferArgs {
    /// What is offered.
    #[arg(long)]
    pub expertise: String,
    /// Person-days.
    #[arg(long)]
    pub days: i64,
    /// Value.
    #[arg(long)]
    pub value: i64,
    /// ISO 4217.
    #[arg(long)]
    pub currency: String,
    /// Year.
    #[arg(long)]
    pub year: i64,
    /// Pillar.
    #[arg(long, default_value = "clearance")]
    pub pillar: Pillar,
    /// The need it answers.
    #[arg(long)]
    pub need: Option<String>,
}

#[derive(Args, Debug)]
pub struct NarrativeArgs {
    /// Section.
    #[arg(long)]
    pub section: Section,
    /// New text (or --file).
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// Read the text from a file.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CommentArgs {
    /// Text.
    #[arg(long)]
    pub text: String,
    /// Entity it is about.
    #[arg(long)]
    pub about: Option<String>,
    /// Kind.
    #[arg(long, default_value = "comment")]
    pub kind: CommentKind,
}

#[derive(Args, Debug)]
pub struct AsOfArgs {
    /// Date the report is computed for (default today).
    #[arg(long)]
    pub as_of: Option<String>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only this entity id.
    #[arg(long)]
    pub entity: Option<String>,
    /// Only this organisation.
    #[arg(long)]
    pub org: Option<String>,
    /// Only this person.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this entity kind, e.g. hazard_areas.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only the last N changes.
    #[arg(long)]
    pub last: Option<usize>,
}

#[derive(Args, Debug)]
pub struct AtArgs {
    /// The date (end of that day, UTC).
    #[arg(long)]
    pub date: String,
}

#[derive(Args, Debug)]
pub struct Article7Args {
    /// Report date (default today).
    #[arg(long)]
    pub as_of: Option<String>,
    /// Write Markdown (default) or JSON with --json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
