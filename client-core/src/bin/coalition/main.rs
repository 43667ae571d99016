//! `coalition`: the command-line client of Coalition Sync.
//!
//! Works entirely offline on a local store. Every edit is checked against the author's role
//! and the hard rules before it is made, and "saved" is printed only once the store has made
//! it durable.

mod args;
mod net;
mod render;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{NaiveDate, Utc};
use clap::Parser;
use coalition_core::model::{keys, *};
use coalition_core::report::{conflicts, history, Article7, HistoryFilter, Report, State};
use coalition_core::store::Store;
use coalition_core::sync::DocumentId;
use coalition_core::{export, ids, Coalition, Edit, Identity};

use args::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The open store, the device identity and the output mode.
struct Ctx {
    store: Store,
    json: bool,
    coalition: Option<String>,
}

impl Ctx {
    fn identity(&self) -> Result<Identity> {
        self.store.identity()?.ok_or_else(|| {
            anyhow!(
                "this device has no identity yet: run `coalition init --user U --org O --device D`"
            )
        })
    }

    fn coalition_id(&self) -> Result<DocumentId> {
        if let Some(id) = &self.coalition {
            return DocumentId::parse_id_or_url(id).map_err(|e| anyhow!("--coalition {id}: {e}"));
        }
        let all = self.store.coalitions()?;
        match all.as_slice() {
            [one] => Ok(one.id),
            [] => {
                bail!("no coalition in this store: create one, import one or run `coalition demo`")
            }
            _ => bail!(
                "the store holds {} coalitions: choose one with --coalition",
                all.len()
            ),
        }
    }

    fn load(&mut self) -> Result<Coalition> {
        let id = self.coalition_id()?;
        Ok(self.store.load(&id)?)
    }

    /// Apply an edit and save it durably, then confirm.
    fn edit(&mut self, edit: Edit) -> Result<()> {
        let who = self.identity()?;
        let mut coalition = self.load()?;
        let committed = coalition.apply(&who, edit, now())?;
        self.store
            .save(&mut coalition, &committed.docs)
            .context("the edit was not saved")?;
        if self.json {
            print_json(&serde_json::json!({
                "saved": committed.entity_id,
                "change": committed.hash,
                "documents": committed.docs.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            }))
        } else {
            println!("saved {}", committed.entity_id);
            Ok(())
        }
    }

    fn print<T: serde::Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            print_json(value)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text().as_bytes())?;
            Ok(())
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .with_context(|| format!("`{s}` is not a date (YYYY-MM-DD)"))
}

fn as_of(s: &Option<String>) -> Result<NaiveDate> {
    s.as_deref()
        .map(parse_date)
        .transpose()
        .map(|d| d.unwrap_or_else(today))
}

fn run(cli: Cli) -> Result<()> {
    let store = Store::open(&cli.store)?;
    let mut ctx = Ctx {
        store,
        json: cli.json,
        coalition: cli.coalition.clone(),
    };
    dispatch(&mut ctx, cli.command)?;
    ctx.store.close()?;
    Ok(())
}

fn dispatch(ctx: &mut Ctx, command: Command) -> Result<()> {
    match command {
        Command::Init { user, org, device } => {
            let actor = match ctx.store.identity()? {
                // Keep the actor: changes already made on this device stay attributed to it.
                Some(existing) => existing.actor,
                None => ids::new_actor_id().to_hex_string(),
            };
            let identity = Identity {
                user,
                org,
                device,
                actor,
            };
            ctx.store.set_identity(&identity)?;
            ctx.print(&identity, || {
                format!(
                    "this device is {} of {} on {}\n",
                    identity.user, identity.org, identity.device
                )
            })
        }
        Command::Whoami => {
            let who = ctx.identity()?;
            let roles = match ctx.load() {
                Ok(c) => c.roles_of(&who.org)?,
                Err(_) => vec![],
            };
            let value = serde_json::json!({ "identity": who, "roles": roles });
            ctx.print(&value, || {
                let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                format!(
                    "{} of {} on {} (actor {}); roles: {}\n",
                    who.user,
                    who.org,
                    who.device,
                    who.actor,
                    if roles.is_empty() {
                        "none".into()
                    } else {
                        roles.join(", ")
                    }
                )
            })
        }
        Command::Create(a) => {
            let who = ctx.identity()?;
            let mut coalition = Coalition::create(
                &who,
                CoalitionInfo {
                    name: a.name,
                    affected_state: a.state,
                    treaty_status: a.treaty,
                    entry_into_force: a.entry_into_force,
                },
                Member {
                    org: who.org.clone(),
                    name: a.org_name,
                    kind: a.kind,
                    roles: Default::default(),
                    country: None,
                },
                now(),
            )?;
            ctx.store.save_all(&mut coalition)?;
            let id = coalition.id().to_string();
            ctx.print(
                &serde_json::json!({ "saved": id, "url": coalition.id().to_url() }),
                || format!("saved coalition {id}\n"),
            )
        }
        Command::List => {
            let mut rows = Vec::new();
            for c in ctx.store.coalitions()? {
                let coalition = ctx.store.load(&c.id)?;
                let info = coalition.info().ok();
                rows.push(serde_json::json!({
                    "id": c.id.to_string(),
                    "name": info.as_ref().map(|i| i.name.clone()),
                    "affected_state": info.as_ref().map(|i| i.affected_state.clone()),
                    "documents": c.documents,
                    "bytes": c.bytes,
                }));
            }
            ctx.print(&rows, || render::coalitions(&rows))
        }
        Command::Member(cmd) => member(ctx, cmd),
        Command::Rate(a) => ctx.edit(Edit::AddExchangeRate(ExchangeRate {
            currency: a.currency,
            date: a.date,
            usd_per_unit: a.usd,
            source: a.source,
        })),
        Command::Obligation(a) => {
            let current: Option<Obligation> =
                find(ctx, DocKind::Plan, keys::OBLIGATIONS, a.pillar.as_str())?;
            let mut o = current.unwrap_or(Obligation {
                pillar: a.pillar,
                legal_deadline: None,
                current_deadline: None,
                completed_on: None,
            });
            set(&mut o.legal_deadline, a.legal.map(Some));
            set(&mut o.current_deadline, a.current.map(Some));
            set(&mut o.completed_on, a.completed.map(Some));
            ctx.edit(Edit::PutObligation(o))
        }
        Command::Extension(ExtensionCmd::Add {
            pillar,
            requested,
            previous,
            submitted,
            budget,
            currency,
        }) => ctx.edit(Edit::AddExtensionRequest(ExtensionRequest {
            id: ids::new_entity_id(),
            pillar,
            requested_deadline: requested,
            previous_deadline: previous,
            submitted_on: submitted,
            status: ExtensionStatus::Submitted,
            budget,
            budget_currency: currency,
        })),
        Command::Extension(ExtensionCmd::Decide { id, status }) => {
            ctx.edit(Edit::DecideExtension { id, status })
        }
        Command::Area(cmd) => area(ctx, cmd),
        Command::Task(cmd) => task(ctx, cmd),
        Command::Release(ReleaseCmd::Record(a)) => {
            let who = ctx.identity()?;
            let mut items = std::collections::BTreeMap::new();
            for item in &a.items {
                let (kind, n) = item
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--item {item}: expected TYPE=COUNT"))?;
                let n: i64 = n
                    .trim()
                    .parse()
                    .with_context(|| format!("--item {item}: count is not a number"))?;
                *items.entry(kind.trim().to_string()).or_insert(0) += n;
            }
            ctx.edit(Edit::RecordRelease(LandReleaseEntry {
                id: ids::new_entity_id(),
                area_id: a.area,
                task_id: a.task,
                operator: who.org,
                method: a.method,
                cancelled_m2: a.cancelled,
                reduced_m2: a.reduced,
                cleared_m2: a.cleared,
                items,
                date_of_information: a.date,
                location: a.location,
                amends: a.amends,
                voids: a.voids,
                reason: a.reason,
            }))
        }
        Command::Release(ReleaseCmd::List { pending }) => {
            let coalition = ctx.load()?;
            let state = State::of(&coalition)?;
            let rows: Vec<serde_json::Value> = state
                .releases
                .values()
                .filter(|e| !pending || !state.approvals.contains_key(&e.id))
                .map(|e| {
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    v["approval"] =
                        serde_json::to_value(state.approvals.get(&e.id)).unwrap_or_default();
                    v
                })
                .collect();
            ctx.print(&rows, || render::releases(&state, pending))
        }
        Command::Approve(a) => ctx.edit(Edit::Approve(Approval {
            entry_id: a.entry,
            decision: if a.reject {
                Decision::Rejected
            } else {
                Decision::Approved
            },
            decided_on: a.date.unwrap_or_else(|| today().to_string()),
            note: a.note,
        })),
        Command::Stockpile(StockpileCmd::Add {
            munition_type,
            declared,
            submunitions,
            retained,
            transferred,
        }) => ctx.edit(Edit::PutStockpileLine(StockpileLine {
            id: ids::new_entity_id(),
            munition_type,
            declared,
            declared_submunitions: submunitions,
            retained,
            transferred,
        })),
        Command::Stockpile(StockpileCmd::Edit {
            id,
            munition_type,
            declared,
            submunitions,
            retained,
            transferred,
        }) => {
            let mut l: StockpileLine =
                require(ctx, DocKind::Plan, keys::STOCKPILE, &id, "stockpile line")?;
            set(&mut l.munition_type, munition_type);
            set(&mut l.declared, declared);
            set(&mut l.declared_submunitions, submunitions);
            set(&mut l.retained, retained);
            set(&mut l.transferred, transferred);
            ctx.edit(Edit::PutStockpileLine(l))
        }
        Command::Stockpile(StockpileCmd::Destroy {
            line,
            date,
            quantity,
            submunitions,
        }) => ctx.edit(Edit::AddDestruction(DestructionEvent {
            id: ids::new_entity_id(),
            line_id: line,
            date,
            quantity,
            submunitions,
        })),
        Command::Va(a) => {
            let current: Option<VictimAssistanceYear> = find(
                ctx,
                DocKind::Plan,
                keys::VICTIM_ASSISTANCE,
                &a.year.to_string(),
            )?;
            let mut v = current.unwrap_or(VictimAssistanceYear {
                year: a.year,
                killed: None,
                injured: None,
                survivors: None,
                assisted: None,
            });
            set(&mut v.killed, a.killed.map(Some));
            set(&mut v.injured, a.injured.map(Some));
            set(&mut v.survivors, a.survivors.map(Some));
            set(&mut v.assisted, a.assisted.map(Some));
            ctx.edit(Edit::PutVictimAssistance(v))
        }
        Command::Need(cmd) => need(ctx, cmd),
        Command::Pledge(cmd) => pledge(ctx, cmd),
        Command::Offer(cmd) => offer(ctx, cmd),
        Command::Narrative(a) => {
            let text = match (a.text, a.file) {
                (Some(t), _) => t,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                (None, None) => bail!("give the text with --text or --file"),
            };
            ctx.edit(Edit::SetNarrative {
                section: a.section,
                text,
            })
        }
        Command::Comment(a) => {
            let who = ctx.identity()?;
            ctx.edit(Edit::AddComment(Comment {
                id: ids::new_entity_id(),
                kind: a.kind,
                about: a.about,
                text: a.text,
                org: who.org,
                user: who.user,
                at: now(),
            }))
        }
        Command::Comments => {
            let coalition = ctx.load()?;
            let mut comments: Vec<Comment> =
                State::of(&coalition)?.comments.into_values().collect();
            comments.sort_by_key(|c| c.at);
            ctx.print(&comments, || render::comments(&comments))
        }
        Command::Report(a) => {
            let coalition = ctx.load()?;
            let report = Report::build(&coalition, as_of(&a.as_of)?)?;
            ctx.print(&report, || render::report(&report))
        }
        Command::Conflicts => {
            let mut coalition = ctx.load()?;
            let list = conflicts(&mut coalition)?;
            ctx.print(&list, || render::conflicts(&list))
        }
        Command::History(a) => {
            let mut coalition = ctx.load()?;
            let filter = HistoryFilter {
                entity_id: a.entity,
                org: a.org,
                user: a.user,
                entity: a.kind,
                since: None,
                until: None,
            };
            let mut list = history(&mut coalition, &filter)?;
            if let Some(n) = a.last {
                let skip = list.len().saturating_sub(n);
                list.drain(..skip);
            }
            ctx.print(&list, || render::history(&list))
        }
        Command::At(a) => {
            let date = parse_date(&a.date)?;
            let end_of_day = date
                .and_hms_opt(23, 59, 59)
                .map(|d| d.and_utc().timestamp())
                .unwrap_or(0);
            let mut coalition = ctx.load()?;
            let past = coalition.at_time(end_of_day)?;
            let report = Report::build(&past, date)?;
            ctx.print(&report, || {
                format!(
                    "The plan as it was on {date}:\n\n{}",
                    render::report(&report)
                )
            })
        }
        Command::Article7(a) => {
            let coalition = ctx.load()?;
            let date = as_of(&a.as_of)?;
            let state = State::of(&coalition)?;
            let report = Report::from_state(coalition.id().to_string(), &state, date);
            let forms = Article7::draft(&state, &report, date);
            let text = if ctx.json {
                serde_json::to_string_pretty(&forms)? + "\n"
            } else {
                forms.to_markdown()
            };
            match a.out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {}", path.display());
                    Ok(())
                }
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Command::Export { out } => {
            let mut coalition = ctx.load()?;
            let bytes = export::encode(&mut coalition);
            write_atomically(&out, &bytes)?;
            let value = serde_json::json!({ "file": out, "documents": coalition.docs().count(), "bytes": bytes.len() });
            ctx.print(&value, || {
                format!(
                    "wrote {} ({} documents, {} bytes)\n",
                    out.display(),
                    coalition.docs().count(),
                    bytes.len()
                )
            })
        }
        Command::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let summary = export::import(&mut ctx.store, &bytes)
                .with_context(|| format!("importing {}", file.display()))?;
            ctx.print(&summary, || {
                format!(
                    "merged {} documents of coalition {} ({} changed{})\n",
                    summary.documents,
                    summary.coalition,
                    summary.changed,
                    if summary.new_coalition {
                        ", new on this device"
                    } else {
                        ""
                    }
                )
            })
        }
        Command::Demo { as_org } => {
            let (mut coalition, cast) = coalition_core::demo::bosnia()?;
            ctx.store.save_all(&mut coalition)?;
            let everyone = [&cast.ministry, &cast.bhmac, &cast.expertise, &cast.observer]
                .into_iter()
                .chain(cast.donors.values())
                .chain(cast.operators.values());
            let mut chosen = None;
            for who in everyone {
                if who.org == as_org {
                    chosen = Some(who.clone());
                }
            }
            let who =
                chosen.ok_or_else(|| anyhow!("--as-org {as_org} is not a demo organisation"))?;
            if ctx.store.identity()?.is_none() {
                ctx.store.set_identity(&who)?;
            }
            ctx.coalition = Some(coalition.id().to_string());
            let as_of = parse_date(coalition_core::demo::AS_OF)?;
            let report = Report::build(&coalition, as_of)?;
            ctx.print(&report, || {
                format!(
                    "saved demo coalition {}\n\n{}",
                    coalition.id(),
                    render::report(&report)
                )
            })
        }
        Command::Enroll(a) => net::enroll(&ctx.store, ctx.json, a),
        Command::Sync(a) => net::sync(&mut ctx.store, ctx.json, ctx.coalition.as_deref(), a),
        Command::Status => net::status(&ctx.store, ctx.json),
        Command::Compact => {
            let n = ctx.store.compact(2)?;
            ctx.print(&serde_json::json!({ "compacted": n }), || {
                format!("compacted {n} documents\n")
            })
        }
    }
}

/// Write a file so that a crash leaves either the old file or the whole new one.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Replace a field when a new value was given.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn find<T: serde::de::DeserializeOwned>(
    ctx: &mut Ctx,
    kind: DocKind,
    collection: &str,
    id: &str,
) -> Result<Option<T>> {
    let coalition = ctx.load()?;
    Ok(coalition.find_entity(kind, collection, id)?)
}

fn require<T: serde::de::DeserializeOwned>(
    ctx: &mut Ctx,
    kind: DocKind,
    collection: &str,
    id: &str,
    what: &str,
) -> Result<T> {
    find(ctx, kind, collection, id)?.ok_or_else(|| anyhow!("no {what} with id {id}"))
}

fn member(ctx: &mut Ctx, cmd: MemberCmd) -> Result<()> {
    match cmd {
        MemberCmd::Add {
            org,
            name,
            kind,
            roles,
            country,
        } => {
            let roles = if roles.is_empty() {
                vec![kind.default_role()]
            } else {
                roles
            };
            let existing: Option<Member> = find(ctx, DocKind::Manifest, keys::MEMBERS, &org)?;
            let mut all = existing.map(|m| m.roles).unwrap_or_default();
            for r in roles {
                all.insert(r.as_str().to_string(), true);
            }
            ctx.edit(Edit::PutMember(Member {
                org,
                name,
                kind,
                roles: all,
                country,
            }))
        }
        MemberCmd::Remove { org } => ctx.edit(Edit::RemoveMember { org }),
        MemberCmd::List => {
            let coalition = ctx.load()?;
            let members = coalition.members()?;
            ctx.print(&members, || render::members(&members))
        }
    }
}

fn area(ctx: &mut Ctx, cmd: AreaCmd) -> Result<()> {
    match cmd {
        AreaCmd::Add(f) => {
            let geometry = f
                .geometry
                .clone()
                .ok_or_else(|| anyhow!("--geometry is required (GeoJSON or @FILE)"))?;
            let mut a = HazardArea {
                id: ids::new_entity_id(),
                code: f
                    .code
                    .clone()
                    .ok_or_else(|| anyhow!("--code is required"))?,
                name: f
                    .name
                    .clone()
                    .ok_or_else(|| anyhow!("--name is required"))?,
                admin_area: f.admin_area.clone().unwrap_or_default(),
                geometry: read_geometry(&geometry)?,
                class: f
                    .class
                    .ok_or_else(|| anyhow!("--class sha|cha is required"))?,
                baseline_m2: f
                    .baseline
                    .ok_or_else(|| anyhow!("--baseline is required"))?,
                hazard_types: vec![],
                priority: 3,
                status: AreaStatus::Active,
            };
            apply_area_fields(&mut a, f)?;
            ctx.edit(Edit::PutHazardArea(a))
        }
        AreaCmd::Edit { id, fields } => {
            if fields.baseline.is_some() {
                bail!("use `coalition area rebaseline` to change a baseline: it keeps the old one");
            }
            let mut a: HazardArea =
                require(ctx, DocKind::Plan, keys::HAZARD_AREAS, &id, "hazard area")?;
            apply_area_fields(&mut a, fields)?;
            ctx.edit(Edit::PutHazardArea(a))
        }
        AreaCmd::Rebaseline {
            id,
            baseline,
            date,
            reason,
        } => ctx.edit(Edit::Rebaseline {
            area_id: id,
            baseline_m2: baseline,
            date,
            reason,
        }),
        AreaCmd::List => {
            let coalition = ctx.load()?;
            let state = State::of(&coalition)?;
            ctx.print(&state.hazard_areas, || render::areas(&state))
        }
    }
}

fn read_geometry(arg: &str) -> Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading geometry from {path}"))
        }
        None => Ok(arg.to_string()),
    }
}

fn apply_area_fields(a: &mut HazardArea, f: AreaFields) -> Result<()> {
    set(&mut a.code, f.code);
    set(&mut a.name, f.name);
    set(&mut a.admin_area, f.admin_area);
    set(
        &mut a.geometry,
        f.geometry.as_deref().map(read_geometry).transpose()?,
    );
    set(&mut a.class, f.class);
    set(&mut a.baseline_m2, f.baseline);
    if !f.hazard_types.is_empty() {
        a.hazard_types = f.hazard_types;
    }
    set(&mut a.priority, f.priority);
    set(&mut a.status, f.status);
    Ok(())
}

fn task(ctx: &mut Ctx, cmd: TaskCmd) -> Result<()> {
    match cmd {
        TaskCmd::Add {
            area,
            operator,
            method,
            code,
            start,
            end,
        } => {
            let id = ids::new_entity_id();
            let code = code.unwrap_or_else(|| format!("T-{}", &id[id.len() - 6..]));
            ctx.edit(Edit::PutTask(Task {
                id,
                code,
                area_id: area,
                operator,
                method,
                planned_start: start,
                planned_end: end,
            }))
        }
        TaskCmd::Edit {
            id,
            operator,
            method,
            code,
            start,
            end,
        } => {
            let mut t: Task = require(ctx, DocKind::Plan, keys::TASKS, &id, "task")?;
            set(&mut t.operator, operator);
            set(&mut t.method, method);
            set(&mut t.code, code);
            set(&mut t.planned_start, start.map(Some));
            set(&mut t.planned_end, end.map(Some));
            ctx.edit(Edit::PutTask(t))
        }
        TaskCmd::Progress {
            task,
            status,
            started,
            ended,
        } => {
            let current: Option<TaskProgress> =
                find(ctx, DocKind::Operator, keys::TASK_PROGRESS, &task)?;
            let mut p = current.unwrap_or(TaskProgress {
                task_id: task,
                status,
                actual_start: None,
                actual_end: None,
            });
            p.status = status;
            set(&mut p.actual_start, started.map(Some));
            set(&mut p.actual_end, ended.map(Some));
            ctx.edit(Edit::PutTaskProgress(p))
        }
        TaskCmd::List => {
            let coalition = ctx.load()?;
            let state = State::of(&coalition)?;
            ctx.print(&state.tasks, || render::tasks(&state))
        }
    }
}

fn offer(ctx: &mut Ctx, cmd: OfferCmd) -> Result<()> {
    match cmd {
        OfferCmd::Add(a) => {
            let who = ctx.identity()?;
            ctx.edit(Edit::PutOffer(InKindOffer {
                id: ids::new_entity_id(),
                partner: who.org,
                need_id: a.need,
                pillar: a.pillar,
                expertise: a.expertise,
                person_days: a.days,
                value: a.value,
                currency: a.currency,
                year: a.year,
            }))
        }
        OfferCmd::Edit {
            id,
            expertise,
            days,
            value,
            currency,
            year,
        } => {
            let mut o: InKindOffer = require(ctx, DocKind::Partner, keys::OFFERS, &id, "offer")?;
            set(&mut o.expertise, expertise);
            set(&mut o.person_days, days);
            set(&mut o.value, value);
            set(&mut o.currency, currency);
            set(&mut o.year, year);
            ctx.edit(Edit::PutOffer(o))
        }
        OfferCmd::List => {
            let coalition = ctx.load()?;
            let state = State::of(&coalition)?;
            ctx.print(&state.offers, || render::offers(&state))
        }
    }
}

fn need(ctx: &mut Ctx, cmd: NeedCmd) -> Result<()> {
    match cmd {
        NeedCmd::Add(f) => {
            let start = f.from.ok_or_else(|| anyhow!("--from YEAR is required"))?;
            let n = Need {
                id: ids::new_entity_id(),
                pillar: f.pillar.ok_or_else(|| anyhow!("--pillar is required"))?,
                title: f
                    .title
                    .clone()
                    .ok_or_else(|| anyhow!("--title is required"))?,
                kind: f.kind.unwrap_or(NeedKind::Financial),
                start_year: start,
                end_year: f.to.unwrap_or(start),
                amount: f.amount.ok_or_else(|| anyhow!("--amount is required"))?,
                currency: f
                    .currency
                    .clone()
                    .ok_or_else(|| anyhow!("--currency is required"))?,
                priority: f.priority.unwrap_or(3),
            };
            ctx.edit(Edit::PutNeed(n))
        }
        NeedCmd::Edit { id, fields: f } => {
            let mut n: Need = require(ctx, DocKind::Plan, keys::NEEDS, &id, "need")?;
            set(&mut n.pillar, f.pillar);
            set(&mut n.title, f.title);
            set(&mut n.kind, f.kind);
            set(&mut n.start_year, f.from);
            set(&mut n.end_year, f.to);
            set(&mut n.amount, f.amount);
            set(&mut n.currency, f.currency);
            set(&mut n.priority, f.priority);
            ctx.edit(Edit::PutNeed(n))
        }
        NeedCmd::List => {
            let coalition = ctx.load()?;
            let state = State::of(&coalition)?;
            ctx.print(&state.needs, || render::needs(&state))
        }
    }
}

fn pledge(ctx: &mut Ctx, cmd: PledgeCmd) -> Result<()> {
    match cmd {
        PledgeCmd::Add {
            amount,
            currency,
            pillar,
            from,
            to,
            need,
            channel,
            status,
        } => {
            let who = ctx.identity()?;
            let committed_on = status.covers_need().then(|| today().to_string());
            ctx.edit(Edit::PutPledge(Pledge {
                id: ids::new_entity_id(),
                donor: who.org,
                need_id: need,
                pillar,
                amount,
                currency,
                start_year: from,
                end_year: to,
                channel,
                status,
                committed_on,
            }))
        }
        PledgeCmd::Edit {
            id,
            amount,
            currency,
            pillar,
            from,
            to,
            need,
            channel,
        } => {
            let mut p: Pledge = require(ctx, DocKind::Partner, keys::PLEDGES, &id, "pledge")?;
            set(&mut p.amount, amount);
            set(&mut p.currency, currency);
            set(&mut p.pillar, pillar);
            set(&mut p.start_year, from);
            set(&mut p.end_year, to);
            set(&mut p.need_id, need.map(Some));
            set(&mut p.channel, channel);
            ctx.edit(Edit::PutPledge(p))
        }
        PledgeCmd::Status { id, status, date } => {
            let mut p: Pledge = require(ctx, DocKind::Partner, keys::PLEDGES, &id, "pledge")?;
            if status == PledgeStatus::Committed && p.committed_on.is_none() {
                p.committed_on = Some(date.unwrap_or_else(|| today().to_string()));
            }
            p.status = status;
            ctx.edit(Edit::PutPledge(p))
        }
        PledgeCmd::Disburse {
            id,
            amount,
            currency,
            date,
        } => {
            let p: Pledge = require(ctx, DocKind::Partner, keys::PLEDGES, &id, "pledge")?;
            ctx.edit(Edit::AddDisbursement(Disbursement {
                id: ids::new_entity_id(),
                pledge_id: id,
                amount,
                currency: currency.unwrap_or(p.currency),
                date,
            }))
        }
        PledgeCmd::List => {
            let coalition = ctx.load()?;
            let state = State::of(&coalition)?;
            ctx.print(&state.pledges, || render::pledges(&state))
        }
    }
}
