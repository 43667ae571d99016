//! Benchmarks of the local store and the consolidated report.
//!
//! `cargo run --release -p coalition-tests --bin coalition-bench -- store [KEEP_DIR]`
//!
//! Builds a store holding 50 coalitions (49 demo coalitions and one with 5,000 approved land
//! release entries), then measures: opening the store, loading the large coalition (all its
//! documents, one query and one Automerge load each), computing its report, and its size on
//! disk. Each timing is the median of several runs; results are printed as Markdown rows.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use coalition_core::report::Report;
use coalition_core::store::Store;
use coalition_tests::fixture::large;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn store_bench(keep: Option<std::path::PathBuf>) -> Result<()> {
    let dir = match &keep {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    };
    let mut store = Store::open(&dir)?;
    if store.coalitions()?.len() != 50 {
        let built = Instant::now();
        for _ in 0..49 {
            let (mut demo, _) = coalition_core::demo::bosnia()?;
            store.save_all(&mut demo)?;
        }
        let mut big = large(5_000)?;
        store.save_all(&mut big)?;
        store.compact(1)?;
        eprintln!("built the store in {:.1} s", built.elapsed().as_secs_f64());
    }
    let big_id = store
        .coalitions()?
        .iter()
        .max_by_key(|c| c.bytes)
        .map(|c| c.id)
        .context("no coalition")?;
    store.close()?;

    let runs = 15;
    let (mut open, mut load, mut hydrate, mut report) = (vec![], vec![], vec![], vec![]);
    let as_of = NaiveDate::from_ymd_opt(2023, 3, 1).context("date")?;
    let mut released = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let mut store = Store::open(&dir)?;
        let listed = store.coalitions()?.len();
        open.push(t.elapsed());
        if listed != 50 {
            bail!("expected 50 coalitions, found {listed}");
        }
        let t = Instant::now();
        let coalition = store.load(&big_id)?;
        load.push(t.elapsed());
        let t = Instant::now();
        let state = coalition_core::report::State::of(&coalition)?;
        hydrate.push(t.elapsed());
        let r = Report::from_state(big_id.to_string(), &state, as_of);
        report.push(t.elapsed());
        released = r.clearance.released_m2;
    }
    let store = Store::open(&dir)?;
    let bytes = store.coalition_bytes(&big_id)?;
    let file = std::fs::metadata(store.path())?.len();
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| open a store of 50 coalitions (and list them) | {} | – |",
        ms(median(open))
    );
    println!(
        "| load the coalition with 5,000 land release entries | {} | < 100 ms |",
        ms(median(load))
    );
    println!(
        "| compute its report ({released} m² released) | {} | < 50 ms |",
        ms(median(report))
    );
    println!(
        "| of which reading every entity out of the documents | {} | – |",
        ms(median(hydrate))
    );
    println!(
        "| its size in the store | {:.2} MB | < 3 MB |",
        bytes as f64 / 1_000_000.0
    );
    println!(
        "| whole database file (50 coalitions) | {:.2} MB | – |",
        file as f64 / 1_000_000.0
    );
    if keep.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("coalition-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        // An optional second argument keeps the built store there and reuses it next time.
        Some("store") | None => store_bench(std::env::args().nth(2).map(Into::into)),
        Some(other) => bail!("unknown benchmark `{other}`; available: store"),
    }
}
