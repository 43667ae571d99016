//! Benchmarks of the relay: bytes on the wire, and throughput, latency and memory under load,
//! against the JavaScript reference relay.
//!
//! ```text
//! relay-bench wire [--entries 5000]
//! relay-bench load --clients N --duration S [--relay ours|js] [--rate EDITS_PER_S_PER_CLIENT]
//!                  [--group CLIENTS_PER_DOC] [--drain S] [--stock-js]
//! relay-bench hostile --clients N --hostile H --duration S [--rate R] [--group G] [--drain S]
//!                     [--kinds garbage,forbidden,credentials]
//! ```
//!
//! Everything runs on 127.0.0.1. The relay is a child process: the release `coalition-server`
//! next to this binary (or `$COALITION_SERVER`), or `node tests/js/reference-relay.mjs`.
//! Results are printed as Markdown on stdout; progress goes to stderr.

mod relay_bench {
    pub mod common;
    pub mod hostile;
    pub mod load;
    pub mod stock;
    pub mod wire;
}

use std::time::Duration;

use anyhow::{bail, Context, Result};
use relay_bench::common::RelayKind;
use relay_bench::load::{LoadArgs, Row};

fn value<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let text = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            text.parse()
                .map_err(|_| anyhow::anyhow!("{name}: cannot read `{text}`"))
        }
    }
}

/// The options of `load`, shared by `hostile`.
fn load_args(args: &[String]) -> Result<LoadArgs> {
    let relay = match value(args, "--relay", "ours".to_string())?.as_str() {
        "ours" => RelayKind::Ours,
        "js" => RelayKind::Js,
        other => bail!("--relay {other}: expected ours or js"),
    };
    let load = LoadArgs {
        clients: value(args, "--clients", 100usize)?,
        duration: Duration::from_secs_f64(value(args, "--duration", 60.0f64)?),
        relay,
        rate: value(args, "--rate", 1.0f64)?,
        group: value(args, "--group", 10usize)?.max(2),
        drain: Duration::from_secs_f64(value(args, "--drain", 20.0f64)?),
        stock_js: args.iter().any(|a| a == "--stock-js"),
    };
    if load.clients == 0 || load.duration > Duration::from_secs(600) {
        bail!("--clients must be positive and --duration at most 600 s");
    }
    Ok(load)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("wire") => relay_bench::wire::run(value(&args, "--entries", 5000usize)?),
        Some("hostile") => {
            let load = load_args(&args)?;
            let hostile = value(&args, "--hostile", 20usize)?;
            let kinds = relay_bench::hostile::Kind::parse_list(&value(
                &args,
                "--kinds",
                "garbage,forbidden,credentials".to_string(),
            )?)?;
            relay_bench::hostile::run(&relay_bench::hostile::HostileArgs {
                load,
                hostile,
                kinds,
            })
        }
        Some("load") => {
            let load = load_args(&args)?;
            let row = relay_bench::load::run(&load)?;
            println!("{}", Row::header());
            println!("{}", row.markdown());
            eprintln!(
                "setup {:.1} s; {} clients failed",
                row.setup_s, row.failed_clients
            );
            Ok(())
        }
        _ => bail!("usage: relay-bench wire [--entries N] | load --clients N --duration S [--relay ours|js] [--rate R] [--group G] [--drain S] [--stock-js] | hostile --clients N --hostile H --duration S [--rate R] [--group G] [--drain S] [--kinds garbage,forbidden,credentials]"),
    }
}
