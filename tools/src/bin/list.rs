//! `tools/list [KIND]`: the registry, with each entry's one-line doc.
use clap::Parser;
use vpetl_core::registry::{self, Kind};

#[derive(Parser)]
#[command(about = "List registered components (backbones, methods, heads, datasets, ...)")]
struct Args {
    /// Only this kind (backbone, method, neck, head, model, dataset, transform, evaluator,
    /// optimizer, scheduler, hook).
    kind: Option<String>,
}

fn main() {
    vpetl_tools::init();
    let args = Args::parse();
    let kinds: Vec<Kind> = match &args.kind {
        None => Kind::ALL.to_vec(),
        Some(k) => match Kind::parse(k) {
            Some(kind) => vec![kind],
            None => vpetl_tools::exit_with(anyhow::anyhow!(
                "unknown kind `{k}` (kinds: {})",
                Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            )),
        },
    };
    for kind in kinds {
        let entries: Vec<_> = registry::of_kind(kind).collect();
        println!("{}s ({}):", kind, entries.len());
        for e in entries {
            println!("  {:<28} {}", e.qualified_name(), e.doc);
        }
    }
}
