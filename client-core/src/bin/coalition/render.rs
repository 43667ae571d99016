//! Text output of the read commands.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::DateTime;
use coalition_core::model::{Comment, Member};
use coalition_core::report::{Conflict, HistoryEntry, Report, State};

fn when(t: i64) -> String {
    DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Group digits by thousands: 6470000 → 6,470,000.
fn n(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn usd(v: f64) -> String {
    format!("${}", n(v.round() as i64))
}

pub fn coalitions(rows: &[serde_json::Value]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        s.push_str("no coalitions on this device\n");
    }
    for r in rows {
        let _ = writeln!(
            s,
            "{}  {} ({})  {} documents, {} bytes",
            r["id"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or("?"),
            r["affected_state"].as_str().unwrap_or("?"),
            r["documents"],
            r["bytes"]
        );
    }
    s
}

pub fn members(members: &BTreeMap<String, Member>) -> String {
    let mut s = String::new();
    for m in members.values() {
        let roles: Vec<String> = m.role_set().iter().map(|r| r.to_string()).collect();
        let _ = writeln!(
            s,
            "{:<12} {:<14} {:<40} roles: {}",
            m.org,
            m.kind,
            m.name,
            roles.join(", ")
        );
    }
    s
}

pub fn areas(state: &State) -> String {
    let mut s = String::new();
    let mut areas: Vec<_> = state.hazard_areas.values().collect();
    areas.sort_by(|a, b| a.code.cmp(&b.code));
    for a in areas {
        let _ = writeln!(
            s,
            "{} {:<10} {:<3} {:>10} m²  p{}  {:<11} {} ({})",
            a.id,
            a.code,
            a.class.as_str().to_uppercase(),
            n(a.baseline_m2),
            a.priority,
            a.status,
            a.name,
            a.admin_area
        );
    }
    s
}

pub fn tasks(state: &State) -> String {
    let mut s = String::new();
    for t in state.tasks.values() {
        let progress = state
            .task_progress
            .get(&t.id)
            .map(|p| p.status.to_string())
            .unwrap_or_else(|| "planned".into());
        let area = state
            .hazard_areas
            .get(&t.area_id)
            .map(|a| a.code.as_str())
            .unwrap_or("?");
        let _ = writeln!(
            s,
            "{} {:<10} {:<10} {:<9} {:<10} {}",
            t.id, t.code, area, t.method, t.operator, progress
        );
    }
    s
}

pub fn releases(state: &State, pending_only: bool) -> String {
    let mut entries: Vec<_> = state
        .releases
        .values()
        .filter(|e| !pending_only || !state.approvals.contains_key(&e.id))
        .collect();
    entries.sort_by(|a, b| (&a.date_of_information, &a.id).cmp(&(&b.date_of_information, &b.id)));
    let mut s = String::new();
    for e in entries {
        let area = state
            .hazard_areas
            .get(&e.area_id)
            .map(|a| a.code.as_str())
            .unwrap_or("?");
        let status = state
            .approvals
            .get(&e.id)
            .map(|a| a.decision.to_string())
            .unwrap_or_else(|| "pending".into());
        let correction = match (&e.amends, &e.voids) {
            (Some(t), _) => format!(" amends {t}"),
            (_, Some(t)) => format!(" voids {t}"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{} {} {:<10} {:<8} {:<9} {:>9} m² {:>5} items  {}{}",
            e.id,
            e.date_of_information,
            area,
            e.operator,
            e.method,
            n(e.released_m2()),
            e.items_total(),
            status,
            correction
        );
    }
    s
}

pub fn needs(state: &State) -> String {
    let mut s = String::new();
    for x in state.needs.values() {
        let _ = writeln!(
            s,
            "{} {:<17} {}–{} {:>12} {} p{}  {}",
            x.id,
            x.pillar,
            x.start_year,
            x.end_year,
            n(x.amount),
            x.currency,
            x.priority,
            x.title
        );
    }
    s
}

pub fn pledges(state: &State) -> String {
    let mut s = String::new();
    for p in state.pledges.values() {
        let _ = writeln!(
            s,
            "{} {:<10} {:<17} {}–{} {:>13} {} {}",
            p.id,
            p.donor,
            p.pillar,
            p.start_year,
            p.end_year,
            n(p.amount),
            p.currency,
            p.status
        );
    }
    s
}

pub fn offers(state: &State) -> String {
    let mut s = String::new();
    for o in state.offers.values() {
        let _ = writeln!(
            s,
            "{} {:<10} {:<17} {} {:>4} days {:>10} {}  {}",
            o.id,
            o.partner,
            o.pillar,
            o.year,
            o.person_days,
            n(o.value),
            o.currency,
            o.expertise
        );
    }
    s
}

pub fn comments(list: &[Comment]) -> String {
    let mut s = String::new();
    for c in list {
        let _ = writeln!(
            s,
            "{} {} ({}) [{}]{}: {}",
            when(c.at),
            c.user,
            c.org,
            c.kind,
            c.about
                .as_ref()
                .map(|a| format!(" on {a}"))
                .unwrap_or_default(),
            c.text
        );
    }
    s
}

pub fn report(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({}) — report as of {}",
        r.name, r.affected_state, r.as_of
    );
    let _ = writeln!(
        s,
        "{} members, {} hazard areas, {} land release entries\n",
        r.members, r.hazard_areas, r.release_entries
    );
    let c = &r.clearance;
    let _ = writeln!(s, "Clearance (Article 4)");
    let _ = writeln!(
        s,
        "  remaining: {} m² SHA, {} m² CHA in {} open areas",
        n(c.remaining_sha_m2),
        n(c.remaining_cha_m2),
        c.open_areas
    );
    let _ = writeln!(
        s,
        "  released:  {} m² in all; awaiting approval: {} entries, {} m²",
        n(c.released_m2),
        c.pending_entries,
        n(c.pending_m2)
    );
    let _ = writeln!(
        s,
        "  {:<6} {:>12} {:>12} {:>12} {:>7}",
        "year", "cancelled", "reduced", "cleared", "items"
    );
    for y in &c.by_year {
        let _ = writeln!(
            s,
            "  {:<6} {:>12} {:>12} {:>12} {:>7}",
            y.year,
            n(y.cancelled_m2),
            n(y.reduced_m2),
            n(y.cleared_m2),
            n(y.items)
        );
    }
    let d = &r.deadline_risk;
    let _ = writeln!(
        s,
        "  deadline: {} — last 12 months {} m²; projected completion {} — {:?}\n",
        d.current_deadline.as_deref().unwrap_or("not set"),
        n(d.released_last_12_months_m2),
        d.projected_completion
            .as_deref()
            .unwrap_or("none (no release in 12 months)"),
        d.level
    );
    let st = &r.stockpile;
    let _ = writeln!(
        s,
        "Stockpile (Article 3): declared {}, destroyed {}, retained {}, transferred {}, remaining {} ({} of {} submunitions destroyed)\n",
        n(st.declared),
        n(st.destroyed),
        n(st.retained),
        n(st.transferred),
        n(st.remaining),
        n(st.destroyed_submunitions),
        n(st.declared_submunitions)
    );
    let _ = writeln!(s, "Funding (USD)");
    let _ = writeln!(
        s,
        "  {:<18} {:>13} {:>13} {:>13} {:>13} {:>13}",
        "pillar", "needs", "announced", "committed", "disbursed", "gap"
    );
    for f in &r.funding_by_pillar {
        let _ = writeln!(
            s,
            "  {:<18} {:>13} {:>13} {:>13} {:>13} {:>13}",
            f.pillar.map(|p| p.to_string()).unwrap_or_default(),
            usd(f.needs_usd),
            usd(f.announced_usd),
            usd(f.committed_usd),
            usd(f.disbursed_usd),
            usd(f.gap_usd)
        );
    }
    let _ = writeln!(s, "\nWho pledged what (USD)");
    let mut donors: BTreeMap<&str, BTreeMap<i64, f64>> = BTreeMap::new();
    for cell in &r.donor_matrix {
        *donors
            .entry(&cell.donor)
            .or_default()
            .entry(cell.year)
            .or_default() += cell.pledged_usd;
    }
    for (donor, years) in donors {
        let row: Vec<String> = years
            .iter()
            .map(|(y, v)| format!("{y}: {}", usd(*v)))
            .collect();
        let _ = writeln!(s, "  {:<10} {}", donor, row.join(", "));
    }
    if !r.flags.is_empty() {
        let _ = writeln!(s, "\nFlags ({})", r.flags.len());
        for f in &r.flags {
            let _ = writeln!(s, "  [{}] {}", f.rule, f.message);
        }
    }
    s
}

pub fn conflicts(list: &[Conflict]) -> String {
    let mut s = String::new();
    if list.is_empty() {
        s.push_str("no conflicts\n");
    }
    for c in list {
        let _ = writeln!(s, "{} {} . {}", c.collection, c.id, c.field);
        for v in &c.values {
            let _ = writeln!(
                s,
                "    {}  by {} ({}) on {} at {}",
                v.value,
                v.user.as_deref().unwrap_or("?"),
                v.org.as_deref().unwrap_or("?"),
                v.device.as_deref().unwrap_or("?"),
                when(v.time)
            );
        }
    }
    s
}

pub fn history(list: &[HistoryEntry]) -> String {
    let mut s = String::new();
    for e in list {
        let _ = writeln!(
            s,
            "{}  {:<14} {:<8} {:<10} {} {}{}",
            when(e.time),
            e.user
                .as_deref()
                .unwrap_or(&e.actor[..8.min(e.actor.len())]),
            e.org.as_deref().unwrap_or("?"),
            e.action.as_deref().unwrap_or("change"),
            e.entity.as_deref().unwrap_or("?"),
            e.id.as_deref().unwrap_or(""),
            if e.fields.is_empty() {
                String::new()
            } else {
                format!(" [{}]", e.fields.join(", "))
            }
        );
    }
    s
}
