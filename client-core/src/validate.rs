//! Hard validation rules: an edit that breaks one is refused with an error that says what is
//! wrong and where (`collection/id/field: problem`).
//!
//! The same rules run on the device before an edit is committed and on the relay before a
//! change is accepted. Soft rules (released more than the baseline, disbursed more than
//! committed...) are never refused; they are flags in the consolidated view (`report`).

use chrono::NaiveDate;

use crate::coalition::{Coalition, Edit, Identity};
use crate::error::EditError;
use crate::model::{keys, *};
use crate::{geo, refdata};

/// Years the model accepts for plans, pledges and figures.
const YEARS: std::ops::RangeInclusive<i64> = 1990..=2100;

/// Check the coalition's description.
pub fn coalition_info(info: &CoalitionInfo) -> Result<(), EditError> {
    let id = "coalition";
    non_empty(keys::COALITION, id, "name", &info.name)?;
    country(keys::COALITION, id, "affected_state", &info.affected_state)?;
    if let Some(d) = &info.entry_into_force {
        date(keys::COALITION, id, "entry_into_force", d)?;
    }
    Ok(())
}

/// Check a member organisation.
pub fn member(m: &Member) -> Result<(), EditError> {
    let c = keys::MEMBERS;
    org_id(c, &m.org, "org", &m.org)?;
    non_empty(c, &m.org, "name", &m.name)?;
    for role in m.roles.keys() {
        role.parse::<Role>()
            .map_err(|e| EditError::invalid(c, &m.org, "roles", e.to_string()))?;
    }
    if let Some(code) = &m.country {
        country(c, &m.org, "country", code)?;
    }
    Ok(())
}

/// Check one edit against the hard rules, with the coalition as it stands on this device:
/// the rules on the value itself ([`stored`] applies the same ones to data from a peer), then
/// the rules that need the rest of the coalition (referenced entities, the current status).
pub fn edit(coalition: &Coalition, who: &Identity, edit: &Edit) -> Result<(), EditError> {
    let c = edit.collection();
    match edit {
        Edit::SetCoalition(info) => coalition_info(info),
        Edit::PutMember(m) => member(m),
        Edit::RemoveMember { org } => {
            if !coalition.members()?.contains_key(org) {
                return Err(EditError::NotFound {
                    what: "member",
                    id: org.clone(),
                });
            }
            if *org == who.org {
                return Err(EditError::invalid(
                    c,
                    org,
                    "org",
                    "a coordinator cannot remove its own organisation",
                ));
            }
            Ok(())
        }
        Edit::AddExchangeRate(r) => exchange_rate(r),
        Edit::PutObligation(o) => obligation(o),
        Edit::AddExtensionRequest(r) => extension_request(r),
        Edit::DecideExtension { .. } => Ok(()),
        Edit::PutHazardArea(a) => hazard_area(a),
        Edit::Rebaseline {
            area_id,
            baseline_m2,
            date: d,
            reason,
        } => {
            non_negative(keys::HAZARD_AREAS, area_id, "baseline_m2", *baseline_m2)?;
            date(c, area_id, "date", d)?;
            non_empty(c, area_id, "reason", reason)
        }
        Edit::PutTask(t) => {
            task(t)?;
            area_exists(coalition, c, &t.id, &t.area_id)?;
            if !coalition
                .members()?
                .get(&t.operator)
                .is_some_and(|m| m.role_set().contains(&Role::Operator))
            {
                return Err(EditError::invalid(
                    c,
                    &t.id,
                    "operator",
                    format!(
                        "`{}` is not an operator member of the coalition",
                        t.operator
                    ),
                ));
            }
            Ok(())
        }
        Edit::PutTaskProgress(p) => {
            task_progress(p)?;
            let task = coalition
                .find_entity::<Task>(DocKind::Plan, keys::TASKS, &p.task_id)?
                .ok_or_else(|| EditError::NotFound {
                    what: "task",
                    id: p.task_id.clone(),
                })?;
            if task.operator != who.org {
                return Err(EditError::invalid(
                    c,
                    &p.task_id,
                    "task_id",
                    format!("the task is assigned to {}, not {}", task.operator, who.org),
                ));
            }
            Ok(())
        }
        Edit::RecordRelease(e) => release(coalition, e),
        Edit::Approve(a) => {
            approval(a)?;
            if coalition
                .find_entity::<LandReleaseEntry>(DocKind::Operator, keys::RELEASES, &a.entry_id)?
                .is_none()
            {
                return Err(EditError::NotFound {
                    what: "land release entry",
                    id: a.entry_id.clone(),
                });
            }
            Ok(())
        }
        Edit::PutStockpileLine(l) => stockpile_line(l),
        Edit::AddDestruction(e) => {
            destruction(e)?;
            if coalition
                .find_entity::<StockpileLine>(DocKind::Plan, keys::STOCKPILE, &e.line_id)?
                .is_none()
            {
                return Err(EditError::NotFound {
                    what: "stockpile line",
                    id: e.line_id.clone(),
                });
            }
            Ok(())
        }
        Edit::PutVictimAssistance(v) => victim_assistance(v),
        Edit::PutNeed(n) => need(n),
        Edit::PutPledge(p) => {
            own_name(c, &p.id, "donor", &p.donor, &who.org, "a pledge")?;
            pledge(p)?;
            if let Some(need) = &p.need_id {
                need_exists(coalition, c, &p.id, need)?;
            }
            if let Some(current) =
                coalition.find_entity::<Pledge>(DocKind::Partner, keys::PLEDGES, &p.id)?
            {
                pledge_moves_forward(&current, p)?;
            }
            Ok(())
        }
        Edit::AddDisbursement(d) => {
            disbursement(d)?;
            match coalition.find_entity::<Pledge>(DocKind::Partner, keys::PLEDGES, &d.pledge_id)? {
                Some(p) if p.donor == who.org => Ok(()),
                Some(p) => Err(EditError::invalid(
                    c,
                    &d.id,
                    "pledge_id",
                    format!("the pledge is {}'s, not {}'s", p.donor, who.org),
                )),
                None => Err(EditError::NotFound {
                    what: "pledge",
                    id: d.pledge_id.clone(),
                }),
            }
        }
        Edit::PutOffer(o) => {
            own_name(c, &o.id, "partner", &o.partner, &who.org, "an offer")?;
            offer(o)?;
            if let Some(need) = &o.need_id {
                need_exists(coalition, c, &o.id, need)?;
            }
            Ok(())
        }
        Edit::SetNarrative { .. } => Ok(()),
        Edit::AddComment(cm) => {
            comment(cm)?;
            if cm.org != who.org || cm.user != who.user {
                return Err(EditError::invalid(
                    c,
                    &cm.id,
                    "user",
                    "a comment is signed by its author",
                ));
            }
            Ok(())
        }
    }
}

/// A land release entry: its value rules, then its references: the hazard area exists, and a
/// correction points at an existing entry of the same operator.
pub fn release(coalition: &Coalition, e: &LandReleaseEntry) -> Result<(), EditError> {
    let c = keys::RELEASES;
    release_value(e)?;
    area_exists(coalition, c, &e.id, &e.area_id)?;
    if let Some(target) = e.amends.as_ref().or(e.voids.as_ref()) {
        match coalition.find_entity::<LandReleaseEntry>(
            DocKind::Operator,
            keys::RELEASES,
            target,
        )? {
            Some(t) if t.operator == e.operator => {}
            Some(t) => {
                return Err(EditError::invalid(
                    c,
                    &e.id,
                    "amends",
                    format!(
                        "entry {target} is {}'s; only its operator corrects it",
                        t.operator
                    ),
                ));
            }
            None => {
                return Err(EditError::NotFound {
                    what: "land release entry",
                    id: target.clone(),
                })
            }
        }
    }
    Ok(())
}

/// A pledge's status only moves forward (or to cancelled before it is paid).
pub fn pledge_moves_forward(current: &Pledge, next: &Pledge) -> Result<(), EditError> {
    if current.status.may_become(next.status) {
        Ok(())
    } else {
        Err(EditError::invalid(
            keys::PLEDGES,
            &next.id,
            "status",
            format!(
                "a pledge's status only moves forward: {} cannot become {}",
                current.status, next.status
            ),
        ))
    }
}

/// Check an entity as it is stored in a document of `kind` owned by `owner`, under
/// `collection/key`: the rules on the value itself, that its id is its key, and that a
/// partner's or operator's entity is in its own name. This is what a relay can check of data
/// from a peer, whatever software wrote it; references to other documents are not checked,
/// since those may arrive later.
pub fn stored(
    collection: &str,
    key: &str,
    owner: Option<&str>,
    json: serde_json::Value,
) -> Result<(), EditError> {
    fn decode<T: serde::de::DeserializeOwned>(
        collection: &str,
        key: &str,
        json: serde_json::Value,
    ) -> Result<T, EditError> {
        serde_json::from_value(json).map_err(|source| EditError::Decode {
            at: format!("{collection}/{key}"),
            source,
        })
    }
    let same_key = |field: &str, id: &str| -> Result<(), EditError> {
        if id == key {
            Ok(())
        } else {
            Err(EditError::invalid(
                collection,
                key,
                field,
                format!("`{id}` is stored under the key `{key}`"),
            ))
        }
    };
    let owner = owner.unwrap_or_default();
    match collection {
        keys::MEMBERS => {
            let m: Member = decode(collection, key, json)?;
            same_key("org", &m.org)?;
            member(&m)
        }
        keys::DOCUMENTS => decode::<DocEntry>(collection, key, json).map(|_| ()),
        keys::EXCHANGE_RATES => {
            let r: ExchangeRate = decode(collection, key, json)?;
            same_key("currency", &r.key())?;
            exchange_rate(&r)
        }
        keys::OBLIGATIONS => {
            let o: Obligation = decode(collection, key, json)?;
            same_key("pillar", o.pillar.as_str())?;
            obligation(&o)
        }
        keys::EXTENSIONS => {
            let r: ExtensionRequest = decode(collection, key, json)?;
            same_key("id", &r.id)?;
            extension_request(&r)
        }
        keys::HAZARD_AREAS => {
            let a: HazardArea = decode(collection, key, json)?;
            same_key("id", &a.id)?;
            hazard_area(&a)
        }
        keys::REBASELINES => {
            let r: Rebaseline = decode(collection, key, json)?;
            same_key("id", &r.id)?;
            non_negative(collection, key, "baseline_m2", r.baseline_m2)?;
            date(collection, key, "date", &r.date).map(|_| ())
        }
        keys::TASKS => {
            let t: Task = decode(collection, key, json)?;
            same_key("id", &t.id)?;
            task(&t)
        }
        keys::TASK_PROGRESS => {
            let p: TaskProgress = decode(collection, key, json)?;
            same_key("task_id", &p.task_id)?;
            task_progress(&p)
        }
        keys::RELEASES => {
            let e: LandReleaseEntry = decode(collection, key, json)?;
            same_key("id", &e.id)?;
            own_name(collection, key, "operator", &e.operator, owner, "an entry")?;
            release_value(&e)
        }
        keys::APPROVALS => {
            let a: Approval = decode(collection, key, json)?;
            same_key("entry_id", &a.entry_id)?;
            approval(&a)
        }
        keys::STOCKPILE => {
            let l: StockpileLine = decode(collection, key, json)?;
            same_key("id", &l.id)?;
            stockpile_line(&l)
        }
        keys::DESTRUCTIONS => {
            let e: DestructionEvent = decode(collection, key, json)?;
            same_key("id", &e.id)?;
            destruction(&e)
        }
        keys::VICTIM_ASSISTANCE => {
            let v: VictimAssistanceYear = decode(collection, key, json)?;
            same_key("year", &v.year.to_string())?;
            victim_assistance(&v)
        }
        keys::NEEDS => {
            let n: Need = decode(collection, key, json)?;
            same_key("id", &n.id)?;
            need(&n)
        }
        keys::PLEDGES => {
            let p: Pledge = decode(collection, key, json)?;
            same_key("id", &p.id)?;
            own_name(collection, key, "donor", &p.donor, owner, "a pledge")?;
            pledge(&p)
        }
        keys::DISBURSEMENTS => {
            let d: Disbursement = decode(collection, key, json)?;
            same_key("id", &d.id)?;
            disbursement(&d)
        }
        keys::OFFERS => {
            let o: InKindOffer = decode(collection, key, json)?;
            same_key("id", &o.id)?;
            own_name(collection, key, "partner", &o.partner, owner, "an offer")?;
            offer(&o)
        }
        keys::COMMENTS => {
            let c: Comment = decode(collection, key, json)?;
            same_key("id", &c.id)?;
            comment(&c)
        }
        keys::NARRATIVE => match json {
            serde_json::Value::String(_) => Ok(()),
            _ => Err(EditError::invalid(
                collection,
                key,
                "text",
                "a narrative section is text",
            )),
        },
        other => Err(EditError::invalid(
            other,
            key,
            "",
            format!("`{other}` is not a collection of this model"),
        )),
    }
}

/// An entity of a partner or operator is in that organisation's name.
fn own_name(
    collection: &str,
    id: &str,
    field: &str,
    named: &str,
    org: &str,
    what: &str,
) -> Result<(), EditError> {
    if named == org {
        Ok(())
    } else {
        Err(EditError::invalid(
            collection,
            id,
            field,
            format!("{org} may only record {what} in its own name, not {named}"),
        ))
    }
}

fn exchange_rate(r: &ExchangeRate) -> Result<(), EditError> {
    let c = keys::EXCHANGE_RATES;
    let id = r.key();
    let on = date(c, &id, "date", &r.date)?;
    currency(c, &id, "currency", &r.currency, on)?;
    if !(r.usd_per_unit.is_finite() && r.usd_per_unit > 0.0) {
        return Err(EditError::invalid(
            c,
            &id,
            "usd_per_unit",
            format!("must be a positive number, got {}", r.usd_per_unit),
        ));
    }
    non_empty(c, &id, "source", &r.source)
}

fn obligation(o: &Obligation) -> Result<(), EditError> {
    let id = o.pillar.as_str();
    dates(
        keys::OBLIGATIONS,
        id,
        &[
            ("legal_deadline", &o.legal_deadline),
            ("current_deadline", &o.current_deadline),
            ("completed_on", &o.completed_on),
        ],
    )
}

fn extension_request(r: &ExtensionRequest) -> Result<(), EditError> {
    let c = keys::EXTENSIONS;
    entity_id(c, &r.id)?;
    let requested = date(c, &r.id, "requested_deadline", &r.requested_deadline)?;
    let previous = date(c, &r.id, "previous_deadline", &r.previous_deadline)?;
    let submitted = date(c, &r.id, "submitted_on", &r.submitted_on)?;
    if requested <= previous {
        return Err(EditError::invalid(
            c,
            &r.id,
            "requested_deadline",
            format!("{requested} is not after the deadline in force ({previous})"),
        ));
    }
    if let Some(b) = r.budget {
        non_negative(c, &r.id, "budget", b)?;
        let code = r.budget_currency.as_deref().ok_or_else(|| {
            EditError::invalid(c, &r.id, "budget_currency", "a budget needs its currency")
        })?;
        currency(c, &r.id, "budget_currency", code, submitted)?;
    }
    Ok(())
}

fn hazard_area(a: &HazardArea) -> Result<(), EditError> {
    let c = keys::HAZARD_AREAS;
    entity_id(c, &a.id)?;
    non_empty(c, &a.id, "code", &a.code)?;
    non_empty(c, &a.id, "name", &a.name)?;
    non_negative(c, &a.id, "baseline_m2", a.baseline_m2)?;
    priority(c, &a.id, a.priority)?;
    geo::parse_area_geometry(&a.geometry)
        .map_err(|e| EditError::invalid(c, &a.id, "geometry", e.to_string()))?;
    Ok(())
}

fn task(t: &Task) -> Result<(), EditError> {
    let c = keys::TASKS;
    entity_id(c, &t.id)?;
    dates(
        c,
        &t.id,
        &[
            ("planned_start", &t.planned_start),
            ("planned_end", &t.planned_end),
        ],
    )
}

fn task_progress(p: &TaskProgress) -> Result<(), EditError> {
    dates(
        keys::TASK_PROGRESS,
        &p.task_id,
        &[
            ("actual_start", &p.actual_start),
            ("actual_end", &p.actual_end),
        ],
    )
}

/// The rules on a land release entry's own figures: areas and counts ≥ 0, the category
/// matches the method, at most one correction target.
fn release_value(e: &LandReleaseEntry) -> Result<(), EditError> {
    let c = keys::RELEASES;
    entity_id(c, &e.id)?;
    date(c, &e.id, "date_of_information", &e.date_of_information)?;
    let areas = [
        ("cancelled_m2", e.cancelled_m2),
        ("reduced_m2", e.reduced_m2),
        ("cleared_m2", e.cleared_m2),
    ];
    for (field, v) in areas {
        non_negative(c, &e.id, field, v)?;
    }
    for (kind, n) in &e.items {
        non_negative(c, &e.id, &format!("items.{kind}"), *n)?;
    }
    let category = match e.method {
        Method::Nts => Some("cancelled_m2"),
        Method::Ts => Some("reduced_m2"),
        Method::Clearance => Some("cleared_m2"),
        Method::Eod => None,
    };
    for (field, v) in areas {
        if v > 0 && Some(field) != category {
            let expected = category
                .map(|f| format!("only {f}"))
                .unwrap_or_else(|| "no area".to_string());
            return Err(EditError::invalid(
                c,
                &e.id,
                field,
                format!(
                    "method {} releases {expected}; {v} m² recorded as {field}",
                    e.method
                ),
            ));
        }
    }
    if e.amends.is_some() && e.voids.is_some() {
        return Err(EditError::invalid(
            c,
            &e.id,
            "voids",
            "an entry either amends or voids another, not both",
        ));
    }
    Ok(())
}

fn approval(a: &Approval) -> Result<(), EditError> {
    date(keys::APPROVALS, &a.entry_id, "decided_on", &a.decided_on).map(|_| ())
}

fn stockpile_line(l: &StockpileLine) -> Result<(), EditError> {
    let c = keys::STOCKPILE;
    entity_id(c, &l.id)?;
    non_empty(c, &l.id, "munition_type", &l.munition_type)?;
    for (field, v) in [
        ("declared", l.declared),
        ("declared_submunitions", l.declared_submunitions),
        ("retained", l.retained),
        ("transferred", l.transferred),
    ] {
        non_negative(c, &l.id, field, v)?;
    }
    Ok(())
}

fn destruction(e: &DestructionEvent) -> Result<(), EditError> {
    let c = keys::DESTRUCTIONS;
    entity_id(c, &e.id)?;
    date(c, &e.id, "date", &e.date)?;
    non_negative(c, &e.id, "quantity", e.quantity)?;
    non_negative(c, &e.id, "submunitions", e.submunitions)
}

fn victim_assistance(v: &VictimAssistanceYear) -> Result<(), EditError> {
    let c = keys::VICTIM_ASSISTANCE;
    let id = v.year.to_string();
    year(c, &id, "year", v.year)?;
    for (field, value) in [
        ("killed", v.killed),
        ("injured", v.injured),
        ("survivors", v.survivors),
        ("assisted", v.assisted),
    ] {
        if let Some(value) = value {
            non_negative(c, &id, field, value)?;
        }
    }
    Ok(())
}

fn need(n: &Need) -> Result<(), EditError> {
    let c = keys::NEEDS;
    entity_id(c, &n.id)?;
    non_empty(c, &n.id, "title", &n.title)?;
    years(c, &n.id, n.start_year, n.end_year)?;
    non_negative(c, &n.id, "amount", n.amount)?;
    priority(c, &n.id, n.priority)?;
    currency(c, &n.id, "currency", &n.currency, jan_first(n.start_year))
}

fn pledge(p: &Pledge) -> Result<(), EditError> {
    let c = keys::PLEDGES;
    entity_id(c, &p.id)?;
    years(c, &p.id, p.start_year, p.end_year)?;
    non_negative(c, &p.id, "amount", p.amount)?;
    currency(c, &p.id, "currency", &p.currency, jan_first(p.start_year))?;
    if let Some(d) = &p.committed_on {
        date(c, &p.id, "committed_on", d)?;
    }
    Ok(())
}

fn disbursement(d: &Disbursement) -> Result<(), EditError> {
    let c = keys::DISBURSEMENTS;
    entity_id(c, &d.id)?;
    let on = date(c, &d.id, "date", &d.date)?;
    non_negative(c, &d.id, "amount", d.amount)?;
    currency(c, &d.id, "currency", &d.currency, on)
}

fn offer(o: &InKindOffer) -> Result<(), EditError> {
    let c = keys::OFFERS;
    entity_id(c, &o.id)?;
    non_empty(c, &o.id, "expertise", &o.expertise)?;
    non_negative(c, &o.id, "person_days", o.person_days)?;
    non_negative(c, &o.id, "value", o.value)?;
    year(c, &o.id, "year", o.year)?;
    currency(c, &o.id, "currency", &o.currency, jan_first(o.year))
}

fn comment(cm: &Comment) -> Result<(), EditError> {
    entity_id(keys::COMMENTS, &cm.id)?;
    non_empty(keys::COMMENTS, &cm.id, "text", &cm.text)
}

fn entity_id(collection: &str, id: &str) -> Result<(), EditError> {
    org_id(collection, id, "id", id)
}

/// Ids and organisation names become map keys and path segments: keep them plain.
fn org_id(collection: &str, id: &str, field: &str, value: &str) -> Result<(), EditError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EditError::invalid(
            collection,
            id,
            field,
            format!("`{value}` is not a valid id (1-64 letters, digits, '-', '_' or '.')"),
        ))
    }
}

fn non_empty(collection: &str, id: &str, field: &str, value: &str) -> Result<(), EditError> {
    if value.trim().is_empty() {
        Err(EditError::invalid(
            collection,
            id,
            field,
            "must not be empty",
        ))
    } else {
        Ok(())
    }
}

fn non_negative(collection: &str, id: &str, field: &str, value: i64) -> Result<(), EditError> {
    if value < 0 {
        Err(EditError::invalid(
            collection,
            id,
            field,
            format!("must be zero or more, got {value}"),
        ))
    } else {
        Ok(())
    }
}

fn priority(collection: &str, id: &str, value: i64) -> Result<(), EditError> {
    if (1..=5).contains(&value) {
        Ok(())
    } else {
        Err(EditError::invalid(
            collection,
            id,
            "priority",
            format!("must be 1 (highest) to 5, got {value}"),
        ))
    }
}

/// Parse an ISO 8601 calendar date.
pub fn date(collection: &str, id: &str, field: &str, value: &str) -> Result<NaiveDate, EditError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        EditError::invalid(
            collection,
            id,
            field,
            format!("`{value}` is not a date (YYYY-MM-DD)"),
        )
    })
}

fn dates(collection: &str, id: &str, fields: &[(&str, &Option<String>)]) -> Result<(), EditError> {
    for (field, value) in fields {
        if let Some(v) = value {
            date(collection, id, field, v)?;
        }
    }
    Ok(())
}

fn year(collection: &str, id: &str, field: &str, value: i64) -> Result<(), EditError> {
    if YEARS.contains(&value) {
        Ok(())
    } else {
        Err(EditError::invalid(
            collection,
            id,
            field,
            format!("{value} is not a year between 1990 and 2100"),
        ))
    }
}

fn years(collection: &str, id: &str, start: i64, end: i64) -> Result<(), EditError> {
    year(collection, id, "start_year", start)?;
    year(collection, id, "end_year", end)?;
    if end < start {
        return Err(EditError::invalid(
            collection,
            id,
            "end_year",
            format!("{end} is before the start year {start}"),
        ));
    }
    Ok(())
}

fn jan_first(year: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(i32::try_from(year).unwrap_or(1990), 1, 1).unwrap_or_default()
}

fn currency(
    collection: &str,
    id: &str,
    field: &str,
    code: &str,
    on: NaiveDate,
) -> Result<(), EditError> {
    refdata::check_currency(code, on)
        .map_err(|e| EditError::invalid(collection, id, field, e.to_string()))
}

fn country(collection: &str, id: &str, field: &str, code: &str) -> Result<(), EditError> {
    refdata::check_country(code)
        .map_err(|e| EditError::invalid(collection, id, field, e.to_string()))
}

fn area_exists(
    coalition: &Coalition,
    collection: &str,
    id: &str,
    area_id: &str,
) -> Result<(), EditError> {
    if coalition
        .find_entity::<HazardArea>(DocKind::Plan, keys::HAZARD_AREAS, area_id)?
        .is_some()
    {
        Ok(())
    } else {
        Err(EditError::invalid(
            collection,
            id,
            "area_id",
            format!("hazard area `{area_id}` does not exist"),
        ))
    }
}

fn need_exists(
    coalition: &Coalition,
    collection: &str,
    id: &str,
    need_id: &str,
) -> Result<(), EditError> {
    if coalition
        .find_entity::<Need>(DocKind::Plan, keys::NEEDS, need_id)?
        .is_some()
    {
        Ok(())
    } else {
        Err(EditError::invalid(
            collection,
            id,
            "need_id",
            format!("need `{need_id}` does not exist"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{area, entry, fixture, Fixture, T0};

    fn refused(f: &mut Fixture, who: &Identity, edit: Edit) -> String {
        let before = crate::report::State::of(&f.c).expect("state");
        let err =
            f.c.apply(who, edit, T0)
                .expect_err("the edit must be refused");
        let after = crate::report::State::of(&f.c).expect("state");
        assert_eq!(
            serde_json::to_value(&before).ok(),
            serde_json::to_value(&after).ok(),
            "a refused edit wrote something"
        );
        err.to_string()
    }

    fn pledge(id: &str, donor: &str, currency: &str, status: PledgeStatus) -> Pledge {
        Pledge {
            id: id.into(),
            donor: donor.into(),
            need_id: None,
            pillar: Pillar::Clearance,
            amount: 1000,
            currency: currency.into(),
            start_year: 2021,
            end_year: 2021,
            channel: "bilateral".into(),
            status,
            committed_on: None,
        }
    }

    #[test]
    fn areas_and_counts_must_not_be_negative() {
        let mut f = fixture();
        let nmac = f.nmac.clone();
        let op = f.operator.clone();
        assert_eq!(
            refused(
                &mut f,
                &nmac,
                Edit::PutHazardArea(area("a3", "HA-3", HazardClass::Sha, -5))
            ),
            "hazard_areas/a3/baseline_m2: must be zero or more, got -5"
        );
        let mut e = entry("e1", &f.cha, "NPA", Method::Clearance, 100, "2021-05-01");
        e.items.insert("submunitions".into(), -1);
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(e)),
            "releases/e1/items.submunitions: must be zero or more, got -1"
        );
        let e = entry("e2", &f.cha, "NPA", Method::Clearance, -100, "2021-05-01");
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(e)),
            "releases/e2/cleared_m2: must be zero or more, got -100"
        );
        let line = StockpileLine {
            id: "s1".into(),
            munition_type: "KB-1".into(),
            declared: 10,
            declared_submunitions: 0,
            retained: -1,
            transferred: 0,
        };
        assert_eq!(
            refused(&mut f, &nmac, Edit::PutStockpileLine(line)),
            "stockpile/s1/retained: must be zero or more, got -1"
        );
    }

    #[test]
    fn release_category_must_match_method() {
        let mut f = fixture();
        let op = f.operator.clone();
        let mut e = entry("e1", &f.cha, "NPA", Method::Nts, 0, "2021-05-01");
        e.cleared_m2 = 500;
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(e)),
            "releases/e1/cleared_m2: method nts releases only cancelled_m2; 500 m² recorded as cleared_m2"
        );
        let mut e = entry("e2", &f.cha, "NPA", Method::Eod, 0, "2021-05-01");
        e.reduced_m2 = 10;
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(e)),
            "releases/e2/reduced_m2: method eod releases no area; 10 m² recorded as reduced_m2"
        );
        for method in [Method::Nts, Method::Ts, Method::Clearance] {
            let e = entry(
                &format!("ok-{method}"),
                &f.cha,
                "NPA",
                method,
                100,
                "2021-05-01",
            );
            f.c.apply(&op, Edit::RecordRelease(e), T0)
                .expect("matching category is accepted");
        }
    }

    #[test]
    fn currency_codes_are_iso_4217_with_retired_ones_only_for_past_dates() {
        let mut f = fixture();
        let donor = f.donor.clone();
        assert_eq!(
            refused(
                &mut f,
                &donor,
                Edit::PutPledge(pledge("p1", "donor-DE", "EUX", PledgeStatus::Announced))
            ),
            "pledges/p1/currency: `EUX` is not an ISO 4217 currency code"
        );
        let mut hrk = pledge("p2", "donor-DE", "HRK", PledgeStatus::Announced);
        hrk.start_year = 2024;
        hrk.end_year = 2024;
        assert_eq!(
            refused(&mut f, &donor, Edit::PutPledge(hrk.clone())),
            "pledges/p2/currency: HRK was retired on 2023-01-01 and cannot be used for 2024-01-01"
        );
        hrk.start_year = 2020;
        hrk.end_year = 2020;
        f.c.apply(&donor, Edit::PutPledge(hrk), T0)
            .expect("HRK before 2023 is accepted");
    }

    #[test]
    fn country_codes_are_iso_3166_or_kosovo() {
        let mut f = fixture();
        let coord = f.coordinator.clone();
        let info = |state: &str| CoalitionInfo {
            name: "x".into(),
            affected_state: state.into(),
            treaty_status: TreatyStatus::StateParty,
            entry_into_force: None,
        };
        let err = refused(&mut f, &coord, Edit::SetCoalition(info("QQ")));
        assert!(
            err.starts_with("coalition/coalition/affected_state: "),
            "{err}"
        );
        f.c.apply(&coord, Edit::SetCoalition(info("XK")), T0)
            .expect("XK is accepted");
    }

    #[test]
    fn polygons_must_be_valid() {
        let mut f = fixture();
        let nmac = f.nmac.clone();
        let mut a = area("a9", "HA-9", HazardClass::Cha, 100);
        a.geometry =
            r#"{"type":"Polygon","coordinates":[[[18.4,43.8],[18.5,43.8],[18.5,43.9]]]}"#.into();
        let err = refused(&mut f, &nmac, Edit::PutHazardArea(a));
        assert!(err.starts_with("hazard_areas/a9/geometry: "), "{err}");
        assert!(err.contains("ring"), "{err}");
    }

    #[test]
    fn edits_stay_inside_role_and_organisation() {
        let mut f = fixture();
        let (donor, other, op, other_op, observer, nmac) = (
            f.donor.clone(),
            f.other_donor.clone(),
            f.operator.clone(),
            f.other_operator.clone(),
            f.observer.clone(),
            f.nmac.clone(),
        );
        // A donor cannot pledge in another donor's name (that document is the other donor's).
        assert_eq!(
            refused(
                &mut f,
                &donor,
                Edit::PutPledge(pledge("p1", "donor-NO", "NOK", PledgeStatus::Announced))
            ),
            "donor-DE (donor) may not write pledges in the partner document of donor-NO"
        );
        f.c.apply(
            &other,
            Edit::PutPledge(pledge("p-no", "donor-NO", "NOK", PledgeStatus::Announced)),
            T0,
        )
        .expect("own pledge");
        // An operator cannot approve, not even its own entry.
        f.c.apply(
            &op,
            Edit::RecordRelease(entry(
                "e1",
                &f.cha.clone(),
                "NPA",
                Method::Clearance,
                100,
                "2021-05-01",
            )),
            T0,
        )
        .expect("entry");
        let approval = Approval {
            entry_id: "e1".into(),
            decision: Decision::Approved,
            decided_on: "2021-05-02".into(),
            note: None,
        };
        assert_eq!(
            refused(&mut f, &op, Edit::Approve(approval.clone())),
            "NPA (operator) may not write approvals in the plan document"
        );
        f.c.apply(&nmac, Edit::Approve(approval), T0)
            .expect("NMAC approves");
        // An operator cannot record entries for another operator.
        let theirs = entry(
            "e2",
            &f.cha.clone(),
            "NPA",
            Method::Clearance,
            100,
            "2021-05-01",
        );
        assert_eq!(
            refused(&mut f, &other_op, Edit::RecordRelease(theirs)),
            "HALO (operator) may not write releases in the operator document of NPA"
        );
        // An observer only comments.
        assert_eq!(
            refused(
                &mut f,
                &observer,
                Edit::PutHazardArea(area("a5", "HA-5", HazardClass::Sha, 1))
            ),
            "CMC (observer) may not write hazard_areas in the plan document"
        );
        let comment = Comment {
            id: "c1".into(),
            kind: CommentKind::Comment,
            about: None,
            text: "ok".into(),
            org: "CMC".into(),
            user: "obi".into(),
            at: T0,
        };
        f.c.apply(&observer, Edit::AddComment(comment), T0)
            .expect("observer comments");
        // Someone not in the coalition writes nothing.
        let stranger = crate::fixture::who("sam", "NOBODY", 9);
        let comment = Comment {
            id: "c2".into(),
            kind: CommentKind::Comment,
            about: None,
            text: "hi".into(),
            org: "NOBODY".into(),
            user: "sam".into(),
            at: T0,
        };
        assert_eq!(
            refused(&mut f, &stranger, Edit::AddComment(comment)),
            "NOBODY (not a member) may not write comments in the comments document"
        );
    }

    #[test]
    fn land_release_entries_are_immutable_and_corrected_by_their_operator() {
        let mut f = fixture();
        let (op, other_op) = (f.operator.clone(), f.other_operator.clone());
        let e = entry("e1", &f.cha, "NPA", Method::Clearance, 100, "2021-05-01");
        f.c.apply(&op, Edit::RecordRelease(e.clone()), T0)
            .expect("entry");
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(e)),
            "releases/e1 already exists and cannot be changed; record a correction instead"
        );
        let mut fix = entry("e2", &f.cha, "HALO", Method::Clearance, 90, "2021-05-01");
        fix.amends = Some("e1".into());
        assert_eq!(
            refused(&mut f, &other_op, Edit::RecordRelease(fix)),
            "releases/e2/amends: entry e1 is NPA's; only its operator corrects it"
        );
        let mut missing = entry("e3", &f.cha, "NPA", Method::Clearance, 90, "2021-05-01");
        missing.voids = Some("nope".into());
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(missing)),
            "land release entry `nope` not found"
        );
        let mut bad_area = entry(
            "e4",
            "no-such-area",
            "NPA",
            Method::Clearance,
            90,
            "2021-05-01",
        );
        bad_area.date_of_information = "2021-05-01".into();
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(bad_area)),
            "releases/e4/area_id: hazard area `no-such-area` does not exist"
        );
        let bad_date = entry("e5", &f.cha, "NPA", Method::Clearance, 90, "01/05/2021");
        assert_eq!(
            refused(&mut f, &op, Edit::RecordRelease(bad_date)),
            "releases/e5/date_of_information: `01/05/2021` is not a date (YYYY-MM-DD)"
        );
    }

    #[test]
    fn pledge_status_only_moves_forward() {
        let mut f = fixture();
        let donor = f.donor.clone();
        f.c.apply(
            &donor,
            Edit::PutPledge(pledge("p1", "donor-DE", "EUR", PledgeStatus::Committed)),
            T0,
        )
        .expect("committed");
        assert_eq!(
            refused(&mut f, &donor, Edit::PutPledge(pledge("p1", "donor-DE", "EUR", PledgeStatus::Announced))),
            "pledges/p1/status: a pledge's status only moves forward: committed cannot become announced"
        );
        f.c.apply(
            &donor,
            Edit::PutPledge(pledge("p1", "donor-DE", "EUR", PledgeStatus::Disbursed)),
            T0,
        )
        .expect("disbursed");
        assert_eq!(
            refused(&mut f, &donor, Edit::PutPledge(pledge("p1", "donor-DE", "EUR", PledgeStatus::Cancelled))),
            "pledges/p1/status: a pledge's status only moves forward: disbursed cannot become cancelled"
        );
    }

    #[test]
    fn other_hard_rules_name_the_field() {
        let mut f = fixture();
        let (nmac, donor, coord) = (f.nmac.clone(), f.donor.clone(), f.coordinator.clone());
        let need = Need {
            id: "n1".into(),
            pillar: Pillar::Clearance,
            title: "x".into(),
            kind: NeedKind::Financial,
            start_year: 2022,
            end_year: 2021,
            amount: 10,
            currency: "USD".into(),
            priority: 1,
        };
        assert_eq!(
            refused(&mut f, &nmac, Edit::PutNeed(need)),
            "needs/n1/end_year: 2021 is before the start year 2022"
        );
        let rate = ExchangeRate {
            currency: "EUR".into(),
            date: "2021-01-01".into(),
            usd_per_unit: 0.0,
            source: "ECB".into(),
        };
        assert_eq!(
            refused(&mut f, &coord, Edit::AddExchangeRate(rate)),
            "exchange_rates/EUR:2021-01-01/usd_per_unit: must be a positive number, got 0"
        );
        let d = Disbursement {
            id: "d1".into(),
            pledge_id: "nope".into(),
            amount: 1,
            currency: "EUR".into(),
            date: "2021-01-01".into(),
        };
        assert_eq!(
            refused(&mut f, &donor, Edit::AddDisbursement(d)),
            "pledge `nope` not found"
        );
        let mut a = area("bad id/with slash", "HA-7", HazardClass::Cha, 1);
        a.geometry = crate::fixture::square();
        let err = refused(&mut f, &nmac, Edit::PutHazardArea(a));
        assert!(err.contains("is not a valid id"), "{err}");
        let ext = ExtensionRequest {
            id: "x1".into(),
            pillar: Pillar::Clearance,
            requested_deadline: "2020-01-01".into(),
            previous_deadline: "2021-03-01".into(),
            submitted_on: "2019-12-01".into(),
            status: ExtensionStatus::Submitted,
            budget: None,
            budget_currency: None,
        };
        assert_eq!(
            refused(&mut f, &nmac, Edit::AddExtensionRequest(ext)),
            "extension_requests/x1/requested_deadline: 2020-01-01 is not after the deadline in force (2021-03-01)"
        );
    }
}
