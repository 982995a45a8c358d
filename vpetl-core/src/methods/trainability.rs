//! Deciding, once, which variables train, and reporting it as PEFT does.
//!
//! Buffers: a variable created not trainable (tch's `zeros_no_train` / `ones_no_train`, or
//! `Path::add(.., false)`) is state rather than a parameter, as a PyTorch `register_buffer`
//! (BatchNorm's running statistics): it never trains, is not counted as a parameter, is never cast
//! to a lower precision with the frozen weights, and is saved with checkpoints.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use regex::Regex;
use tch::{nn, Tensor};

/// Trainable and total parameter counts, overall and per module.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamCounts {
    pub trainable: i64,
    pub total: i64,
    /// Per module (`backbone.blocks`, `methods.lora`, `head`, ...): (trainable, total).
    pub per_module: BTreeMap<String, (i64, i64)>,
    /// The buffers' names (see the module doc), sorted; their values are in no count above.
    pub buffers: Vec<String>,
}

impl ParamCounts {
    /// Trainable parameters outside the head (what PETL tables call the method's parameters).
    pub fn trainable_without_head(&self) -> i64 {
        self.per_module.iter().filter(|(k, _)| !k.starts_with("head")).map(|(_, (t, _))| t).sum()
    }

    /// Parameters the methods added (everything under `methods.`).
    pub fn inserted(&self) -> i64 {
        self.per_module.iter().filter(|(k, _)| k.starts_with("methods.")).map(|(_, (_, n))| n).sum()
    }

    /// PEFT's line: `trainable params: N || all params: M || trainable%: x`.
    pub fn peft_line(&self) -> String {
        let pct = if self.total > 0 { 100.0 * self.trainable as f64 / self.total as f64 } else { 0.0 };
        format!(
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.total)
        )
    }
}

impl fmt::Display for ParamCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.peft_line())?;
        writeln!(f, "  {:<28} {:>14} {:>14}", "module", "trainable", "total")?;
        for (m, (t, n)) in &self.per_module {
            writeln!(f, "  {m:<28} {:>14} {:>14}", thousands(*t), thousands(*n))?;
        }
        if !self.buffers.is_empty() {
            writeln!(f, "  buffers (saved, not trained, not counted): {}", self.buffers.join(", "))?;
        }
        Ok(())
    }
}

pub fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The module a variable belongs to for the report: `backbone.blocks`, `methods.lora`, `head`.
fn module_of(name: &str) -> String {
    let mut parts = name.split('.');
    let first = parts.next().unwrap_or_default();
    match (first, parts.next()) {
        ("head", _) | (_, None) => first.to_string(),
        (_, Some(second)) if second.parse::<u64>().is_ok() => first.to_string(),
        (_, Some(second)) => {
            // Parameters directly under the backbone (cls_token, pos_embed) group as one.
            if first == "backbone" && !name[first.len() + 1 + second.len()..].contains('.') {
                "backbone.embeddings".to_string()
            } else {
                format!("{first}.{second}")
            }
        }
    }
}

/// The buffers of `vs` (variables created not trainable), by name.
pub fn buffers(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    let trainable: HashSet<usize> = vs.trainable_variables().iter().map(|t| t.data_ptr() as usize).collect();
    vs.variables().into_iter().filter(|(_, v)| v.numel() > 0 && !trainable.contains(&(v.data_ptr() as usize))).collect()
}

/// Sets `requires_grad` on every variable: `methods.*` and `head.*` train; `backbone.*` trains when
/// a pattern matches the whole name without `backbone.`; buffers never do. Returns the counts.
pub fn apply(vs: &nn::VarStore, backbone_trainable: &[Regex]) -> ParamCounts {
    let anchored: Vec<Regex> = backbone_trainable
        .iter()
        .map(|r| Regex::new(&format!("^(?:{})$", r.as_str())).expect("an anchored valid regex is valid"))
        .collect();
    let mut counts = ParamCounts::default();
    let buffers = buffers(vs);
    counts.buffers = buffers.keys().cloned().collect();
    for (name, var) in vs.variables() {
        if buffers.contains_key(&name) {
            continue;
        }
        let trainable = match name.strip_prefix("backbone.") {
            Some(rest) => anchored.iter().any(|r| r.is_match(rest)),
            None => true,
        };
        let _ = var.set_requires_grad(trainable);
        let n = var.numel() as i64;
        let entry = counts.per_module.entry(module_of(&name)).or_default();
        entry.1 += n;
        counts.total += n;
        if trainable {
            entry.0 += n;
            counts.trainable += n;
        }
    }
    counts
}
