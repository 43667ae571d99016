//! Draft Article 7 transparency forms F–I, filled from the consolidated view.
//!
//! F: contaminated areas and clearance; G: risk reduction education; H: victim assistance;
//! I: resources and cooperation. They are drafts for the national authority to review, in
//! JSON for tools and Markdown for people.

use std::fmt::Write;

use chrono::NaiveDate;
use serde::Serialize;

use super::{ReleaseYear, Report, State};
use crate::model::{AreaStatus, HazardClass, PledgeStatus, Section, VictimAssistanceYear};

/// One hazard area as form F lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormFArea {
    /// Display code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Administrative area.
    pub admin_area: String,
    /// SHA or CHA.
    pub class: HazardClass,
    /// Baseline m².
    pub baseline_m2: i64,
    /// Remaining m².
    pub remaining_m2: i64,
    /// Status.
    pub status: AreaStatus,
}

/// Form F: contaminated areas and clearance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormF {
    /// Areas still contaminated.
    pub areas: Vec<FormFArea>,
    /// Remaining SHA m².
    pub remaining_sha_m2: i64,
    /// Remaining CHA m².
    pub remaining_cha_m2: i64,
    /// Land released per year.
    pub released_by_year: Vec<ReleaseYear>,
    /// Items destroyed by type.
    pub items_by_type: std::collections::BTreeMap<String, i64>,
    /// The Article 4 deadline in force.
    pub deadline: Option<String>,
    /// The projected completion at the last 12 months' rate.
    pub projected_completion: Option<String>,
}

/// Form G: risk reduction education.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormG {
    /// The plan's risk education narrative.
    pub narrative: String,
}

/// Form H: victim assistance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormH {
    /// Aggregates per year.
    pub years: Vec<VictimAssistanceYear>,
}

/// One line of form I.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormILine {
    /// Donor or partner.
    pub source: String,
    /// Pillar.
    pub pillar: String,
    /// Period.
    pub years: String,
    /// Amount in the original currency.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Status.
    pub status: String,
}

/// Form I: resources and cooperation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormI {
    /// Pledges and offers received.
    pub lines: Vec<FormILine>,
    /// Needs still unfunded, USD, per pillar.
    pub gap_by_pillar_usd: Vec<(String, f64)>,
}

/// The draft forms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Article7 {
    /// The reporting state.
    pub state: String,
    /// The calendar year reported on.
    pub year: i32,
    /// Form F.
    pub form_f: FormF,
    /// Form G.
    pub form_g: FormG,
    /// Form H.
    pub form_h: FormH,
    /// Form I.
    pub form_i: FormI,
}

impl Article7 {
    /// Draft the forms from a state and its report.
    pub fn draft(s: &State, report: &Report, as_of: NaiveDate) -> Article7 {
        let effective = s.effective_releases();
        let mut released: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for e in effective.values() {
            *released.entry(e.area_id.as_str()).or_default() += e.released_m2();
        }
        let areas = s
            .hazard_areas
            .values()
            .filter(|a| a.status != AreaStatus::Released)
            .map(|a| FormFArea {
                code: a.code.clone(),
                name: a.name.clone(),
                admin_area: a.admin_area.clone(),
                class: a.class,
                baseline_m2: a.baseline_m2,
                remaining_m2: (a.baseline_m2 - released.get(a.id.as_str()).copied().unwrap_or(0))
                    .max(0),
                status: a.status,
            })
            .filter(|a| a.remaining_m2 > 0)
            .collect();
        let mut lines: Vec<FormILine> = s
            .pledges
            .values()
            .filter(|p| p.status != PledgeStatus::Cancelled)
            .map(|p| FormILine {
                source: member_name(s, &p.donor),
                pillar: p.pillar.to_string(),
                years: format!("{}–{}", p.start_year, p.end_year),
                amount: p.amount,
                currency: p.currency.clone(),
                status: p.status.to_string(),
            })
            .collect();
        lines.extend(s.offers.values().map(|o| FormILine {
            source: member_name(s, &o.partner),
            pillar: o.pillar.to_string(),
            years: o.year.to_string(),
            amount: o.value,
            currency: o.currency.clone(),
            status: format!("in kind: {} ({} person-days)", o.expertise, o.person_days),
        }));
        lines.sort_by(|a, b| (&a.source, &a.years).cmp(&(&b.source, &b.years)));
        Article7 {
            state: report.affected_state.clone(),
            year: chrono::Datelike::year(&as_of),
            form_f: FormF {
                areas,
                remaining_sha_m2: report.clearance.remaining_sha_m2,
                remaining_cha_m2: report.clearance.remaining_cha_m2,
                released_by_year: report.clearance.by_year.clone(),
                items_by_type: report.clearance.items_by_type.clone(),
                deadline: report.deadline_risk.current_deadline.clone(),
                projected_completion: report.deadline_risk.projected_completion.clone(),
            },
            form_g: FormG {
                narrative: s
                    .narrative
                    .get(Section::RiskEducation.as_str())
                    .cloned()
                    .unwrap_or_default(),
            },
            form_h: FormH {
                years: s.victim_assistance.values().cloned().collect(),
            },
            form_i: FormI {
                lines,
                gap_by_pillar_usd: report
                    .funding_by_pillar
                    .iter()
                    .filter_map(|r| r.pillar.map(|p| (p.to_string(), r.gap_usd)))
                    .collect(),
            },
        }
    }

    /// The forms as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let f = &self.form_f;
        let _ = writeln!(
            md,
            "# Article 7 report (draft) — {} — {}\n",
            self.state, self.year
        );
        let _ = writeln!(
            md,
            "## Form F — Cluster munition contaminated areas and clearance\n"
        );
        let _ = writeln!(
            md,
            "Remaining: {} m² suspected (SHA), {} m² confirmed (CHA). Deadline in force: {}. Projected completion: {}.\n",
            f.remaining_sha_m2,
            f.remaining_cha_m2,
            f.deadline.as_deref().unwrap_or("not set"),
            f.projected_completion.as_deref().unwrap_or("no release in the last 12 months")
        );
        let _ = writeln!(
            md,
            "| Code | Name | Area | Class | Baseline m² | Remaining m² | Status |"
        );
        let _ = writeln!(md, "|---|---|---|---|---:|---:|---|");
        for a in &f.areas {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                a.code,
                escape(&a.name),
                escape(&a.admin_area),
                a.class.as_str().to_uppercase(),
                a.baseline_m2,
                a.remaining_m2,
                a.status
            );
        }
        let _ = writeln!(
            md,
            "\n| Year | Cancelled m² | Reduced m² | Cleared m² | Items destroyed |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for y in &f.released_by_year {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                y.year, y.cancelled_m2, y.reduced_m2, y.cleared_m2, y.items
            );
        }
        if !f.items_by_type.is_empty() {
            let _ = writeln!(
                md,
                "\nItems destroyed by type: {}.",
                f.items_by_type
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(md, "\n## Form G — Risk reduction education\n");
        let narrative = self.form_g.narrative.trim();
        let _ = writeln!(
            md,
            "{}",
            if narrative.is_empty() {
                "(no narrative yet)"
            } else {
                narrative
            }
        );
        let _ = writeln!(md, "\n## Form H — Victim assistance\n");
        let _ = writeln!(md, "| Year | Killed | Injured | Survivors | Assisted |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let cell = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
        for y in &self.form_h.years {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                y.year,
                cell(y.killed),
                cell(y.injured),
                cell(y.survivors),
                cell(y.assisted)
            );
        }
        let _ = writeln!(md, "\n## Form I — Resources and cooperation\n");
        let _ = writeln!(
            md,
            "| Source | Pillar | Years | Amount | Currency | Status |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---|---|");
        for l in &self.form_i.lines {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                escape(&l.source),
                l.pillar,
                l.years,
                l.amount,
                l.currency,
                escape(&l.status)
            );
        }
        let _ = writeln!(
            md,
            "\nUnfunded needs (USD): {}.",
            self.form_i
                .gap_by_pillar_usd
                .iter()
                .map(|(p, g)| format!("{p} {g:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        md
    }
}

fn member_name(s: &State, org: &str) -> String {
    s.members
        .get(org)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| org.to_string())
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
