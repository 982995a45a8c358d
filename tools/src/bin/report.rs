//! `tools/report DIR... [--markdown OUT.md] [--csv OUT.csv] [--plot OUT.png [--size WxH]]`
//!
//! Collects every `results.json` under the given folders and prints the seed's table shape: one row
//! per method (and backbone), one column per dataset (the headline metric), then Mean, Params (M,
//! head excluded, the papers' column) and PPT of the mean.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vpetl_core::engine::results::ppt;

#[derive(Parser)]
#[command(about = "Tabulate results.json files as the V-PETL tables")]
struct Args {
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Also draw the results as a PNG: mean metric against trainable parameters, and per dataset
    /// (the picture `tools/visualize results` draws).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Size of the plot, WIDTHxHEIGHT.
    #[arg(long, default_value = "1400x600", value_parser = vpetl_core::viz::canvas::parse_size)]
    size: (u32, u32),
}

fn run(args: Args) -> anyhow::Result<()> {
    let all = vpetl_tools::collect_results(&args.dirs)?;
    let datasets: Vec<String> = all.iter().map(|r| r.dataset.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let mut rows: BTreeMap<(String, String), (BTreeMap<String, f64>, i64)> = BTreeMap::new();
    for r in &all {
        let row = rows.entry((r.method.clone(), r.backbone.clone())).or_insert_with(|| (BTreeMap::new(), r.params.method));
        row.0.insert(r.dataset.clone(), r.metric.value);
        row.1 = row.1.max(r.params.method);
    }
    let mut header = vec!["Method".to_string(), "Backbone".to_string()];
    header.extend(datasets.iter().cloned());
    header.extend(["Mean".to_string(), "Params (M)".to_string(), "PPT".to_string()]);
    let mut table: Vec<Vec<String>> = Vec::new();
    for ((method, backbone), (values, params)) in &rows {
        let mut line = vec![method.clone(), backbone.clone()];
        line.extend(datasets.iter().map(|d| values.get(d).map_or("-".into(), |v| format!("{v:.1}"))));
        let mean = values.values().sum::<f64>() / values.len() as f64;
        line.push(format!("{mean:.2}"));
        line.push(format!("{:.3}", *params as f64 / 1e6));
        line.push(format!("{:.2}", ppt(mean / 100.0, *params)));
        table.push(line);
    }
    let md = std::iter::once(format!("| {} |", header.join(" | ")))
        .chain(std::iter::once(format!("|{}|", vec!["---"; header.len()].join("|"))))
        .chain(table.iter().map(|l| format!("| {} |", l.join(" | "))))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{md}");
    if let Some(p) = &args.markdown {
        std::fs::write(p, format!("{md}\n")).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.csv {
        let csv = std::iter::once(header.join(",")).chain(table.iter().map(|l| l.join(","))).collect::<Vec<_>>().join("\n");
        std::fs::write(p, format!("{csv}\n")).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        vpetl_core::viz::results_plot::plot(p, args.size, &all, "Results: performance against trainable parameters")?;
    }
    Ok(())
}

fn main() {
    vpetl_tools::init();
    if let Err(e) = run(Args::parse()) {
        vpetl_tools::exit_with(e);
    }
}
