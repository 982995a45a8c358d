//! NOAH's search (`prepare: search`): the supernet and the evolutionary search that choose the
//! per-block prompt, LoRA and adapter sizes, from NOAH's `supernet_train_prompt.py` and
//! `evolution.py` (`ZhangYuanhan-AI/NOAH`, `missing_methods.md` §4).
//!
//! 1. Supernet: every module is allocated at the widest size of the space and sliced (`noah.rs`).
//!    Each training iteration samples a sub-network (per module a depth `d` from `depth`, then an
//!    independent size for each of the first `d` blocks; later blocks get none) and trains its
//!    slices and the head on `supernet_split` (NOAH: train800, 500 epochs, AdamW lr 5e-4, wd 1e-4
//!    without decay on 1-D tensors, timm's cosine schedule per epoch).
//! 2. Evolution: a population of `population` legal candidates (at most `param_limit` trainable
//!    parameters, never evaluated before), ranked by top-1 on `val_split` (NOAH: val200) with the
//!    supernet's weights; per generation the `select` best are kept, `mutations` mutants and
//!    `crossovers` children of them are added and random candidates fill the population up.
//!    As in NOAH, a mutation changes a module (probability `m_prob`) only through its depth: with
//!    probability `s_prob` a new depth is drawn, and new blocks get random sizes; a crossover takes
//!    each module's sizes from one of two parents.
//! 3. The best candidate is the result; the method's and the head's variables go back to their
//!    initial values, so the chosen sub-network trains from a fresh start, as NOAH's retraining does.
//!
//! Differences from NOAH: the parameter limit counts what trains (`noah::arch_params`), whereas
//! NOAH's counter also counts an unused prompt and the full prompt position embedding (about 82k
//! more for ViT-B), so NOAH's default 0.64M limit is looser here; the candidates generated after
//! the last ranking, which NOAH evaluates but never ranks, are not generated.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::noah::{arch_params, Arch, SharedArch};
use super::{Prepare, PrepareData};
use crate::data::sample_seed;
use crate::engine::optim::{AdamWSpec, Groups, OptimizerSpec};
use crate::engine::schedule::CosineLrSpec;

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SearchSpec {
    /// Sizes a prompt, LoRA or adapter module may take in one block (NOAH's VTAB space: 1, 5, 10).
    pub prompt: Vec<i64>,
    pub lora: Vec<i64>,
    pub adapter: Vec<i64>,
    /// Depths a module may reach: it sits in the first `depth` blocks (NOAH: 3, 6, 9, 12).
    pub depth: Vec<usize>,
    /// The split the supernet trains on (`~`: the training data itself).
    pub supernet_split: Option<String>,
    /// The split candidates are ranked on (`~`: the training data itself).
    pub val_split: Option<String>,
    pub supernet: SupernetSpec,
    /// Generations of the evolution (NOAH's script: 15; its default: 20).
    pub generations: usize,
    pub population: usize,
    /// Candidates kept per generation.
    pub select: usize,
    pub mutations: usize,
    pub crossovers: usize,
    pub m_prob: f64,
    pub s_prob: f64,
    /// Most trainable parameters of a candidate (heads excluded).
    pub param_limit: i64,
    pub min_param_limit: i64,
}

impl Default for SearchSpec {
    fn default() -> Self {
        SearchSpec {
            prompt: vec![1, 5, 10],
            lora: vec![1, 5, 10],
            adapter: vec![1, 5, 10],
            depth: vec![3, 6, 9, 12],
            supernet_split: Some("train800".into()),
            val_split: Some("val200".into()),
            supernet: SupernetSpec::default(),
            generations: 20,
            population: 50,
            select: 10,
            mutations: 25,
            crossovers: 25,
            m_prob: 0.2,
            s_prob: 0.4,
            param_limit: 640_000,
            min_param_limit: 0,
        }
    }
}

/// The supernet's training (NOAH's `slurm_train_vtab.sh` with the DeiT parser's defaults).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct SupernetSpec {
    pub epochs: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: u64,
    pub warmup_lr: f64,
    pub min_lr: f64,
}

impl Default for SupernetSpec {
    fn default() -> Self {
        SupernetSpec { epochs: 500, lr: 5e-4, weight_decay: 1e-4, warmup_epochs: 5, warmup_lr: 1e-6, min_lr: 1e-5 }
    }
}

const MODULES: [&str; 3] = ["prompt", "lora", "adapter"];

impl SearchSpec {
    fn choices(&self, module: usize) -> &[i64] {
        [&self.prompt, &self.lora, &self.adapter][module]
    }

    /// What the supernet allocates: each module at its widest size in every block some depth
    /// reaches. Checks the space against the backbone's `blocks` and `max_dim`.
    pub fn widest(&self, blocks: usize, max_dim: i64) -> anyhow::Result<Arch> {
        for (m, name) in MODULES.iter().enumerate() {
            let c = self.choices(m);
            ensure!(!c.is_empty(), "NOAH search: `search.{name}` lists no sizes");
            if let Some(d) = c.iter().find(|&&d| d < 1 || d > max_dim) {
                bail!("NOAH search: `search.{name}` has size {d}, outside 1..={max_dim} (max_dim)");
            }
        }
        ensure!(!self.depth.is_empty(), "NOAH search: `search.depth` lists no depths");
        if let Some(d) = self.depth.iter().find(|&&d| d < 1 || d > blocks) {
            bail!("NOAH search: `search.depth` has {d}, outside 1..={blocks} (the backbone's blocks)");
        }
        ensure!(self.population > 0 && self.select > 0, "NOAH search: `search.population` and `search.select` must be at least 1");
        ensure!(self.supernet.epochs > 0, "NOAH search: `search.supernet.epochs` must be at least 1");
        let deepest = *self.depth.iter().max().expect("checked non-empty");
        let module = |m: usize| {
            let w = *self.choices(m).iter().max().expect("checked non-empty");
            (0..blocks).map(|l| if l < deepest { w } else { 0 }).collect()
        };
        Ok(Arch { prompt: module(0), lora: module(1), adapter: module(2) })
    }
}

fn module(arch: &Arch, m: usize) -> &Vec<i64> {
    [&arch.prompt, &arch.lora, &arch.adapter][m]
}

fn module_mut(arch: &mut Arch, m: usize) -> &mut Vec<i64> {
    [&mut arch.prompt, &mut arch.lora, &mut arch.adapter][m]
}

/// The prepare step of NOAH's search.
pub struct Search {
    spec: SearchSpec,
    arch: SharedArch,
    /// Each block's token width.
    widths: Vec<i64>,
    /// What the variables hold: the largest size each block's module can take.
    allocated: Arch,
    /// The chosen sub-network's parameters and validation top-1 (for the result and the log).
    outcome: std::sync::Mutex<Option<(i64, f64)>>,
}

impl Search {
    pub(super) fn new(spec: SearchSpec, arch: SharedArch, widths: Vec<i64>) -> anyhow::Result<Self> {
        let allocated = spec.widest(widths.len(), i64::MAX)?;
        Ok(Search { spec, arch, widths, allocated, outcome: std::sync::Mutex::new(None) })
    }

    fn blocks(&self) -> usize {
        self.widths.len()
    }

    fn set(&self, arch: Option<Arch>) {
        *self.arch.write().unwrap_or_else(|e| e.into_inner()) = arch;
    }

    /// NOAH's `get_random_cand`: per module a depth, then a size for each block it reaches.
    fn random(&self, rng: &mut ChaCha8Rng) -> Arch {
        let mut arch = Arch { prompt: vec![], lora: vec![], adapter: vec![] };
        for m in 0..MODULES.len() {
            let d = *self.spec.depth.choose(rng).expect("checked non-empty");
            *module_mut(&mut arch, m) =
                (0..self.blocks()).map(|l| if l < d { *self.spec.choices(m).choose(rng).expect("checked") } else { 0 }).collect();
        }
        arch
    }

    /// NOAH's mutation: each module, with probability `m_prob`, keeps its sizes up to a new depth
    /// (drawn with probability `s_prob`, else its current one), new blocks getting random sizes.
    fn mutate(&self, parent: &Arch, rng: &mut ChaCha8Rng) -> Arch {
        let mut child = parent.clone();
        for m in 0..MODULES.len() {
            if rng.gen::<f64>() >= self.spec.m_prob {
                continue;
            }
            let dims = module_mut(&mut child, m);
            let current = dims.iter().position(|&d| d == 0).unwrap_or(dims.len());
            let depth = if rng.gen::<f64>() < self.spec.s_prob { *self.spec.depth.choose(rng).expect("checked") } else { current };
            for (l, d) in dims.iter_mut().enumerate() {
                if l >= depth {
                    *d = 0;
                } else if l >= current {
                    *d = *self.spec.choices(m).choose(rng).expect("checked");
                }
            }
        }
        child
    }

    /// NOAH's crossover: each module's sizes from one of the two parents.
    fn crossover(a: &Arch, b: &Arch, rng: &mut ChaCha8Rng) -> Arch {
        let mut child = a.clone();
        for m in 0..MODULES.len() {
            if rng.gen::<bool>() {
                *module_mut(&mut child, m) = module(b, m).clone();
            }
        }
        child
    }

    /// Trains the supernet: a random sub-network per iteration.
    fn train_supernet(&self, train: &dyn PrepareData, report: &dyn PrepareData, seed: u64) -> anyhow::Result<()> {
        let params = report.parameters();
        ensure!(!params.is_empty(), "NOAH search: the supernet has no trainable variables to train");
        let s = &self.spec.supernet;
        // timm's optimiser factory: no weight decay on biases and other 1-D tensors.
        let no_decay = params.iter().filter(|(_, t)| t.dim() <= 1).map(|(n, _)| regex::escape(n)).collect();
        let adamw = AdamWSpec {
            lr: s.lr,
            weight_decay: s.weight_decay,
            paramwise: Groups { no_decay, ..Groups::default() },
            ..AdamWSpec::default()
        };
        let mut optimizer = adamw.build(params)?;
        let schedule = CosineLrSpec {
            t_initial: s.epochs,
            lr_min: s.min_lr,
            warmup_t: s.warmup_epochs,
            warmup_lr_init: s.warmup_lr,
            ..CosineLrSpec::default()
        };
        let total = s.epochs * train.len() as u64;
        let mut done = 0;
        for epoch in 0..s.epochs {
            let lr = schedule.at(s.lr, epoch);
            for (i, batch) in train.batches(epoch).enumerate() {
                let (images, labels) = batch?;
                let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, epoch, i as u64));
                self.set(Some(self.random(&mut rng)));
                optimizer.zero_grad();
                let loss = train.forward(&images, true).logits.cross_entropy_for_logits(&labels);
                let value = loss.double_value(&[]);
                ensure!(value.is_finite(), "NOAH supernet: the loss is not finite at epoch {}, batch {}", epoch + 1, i + 1);
                loss.backward();
                optimizer.step(lr);
                done += 1;
                report.progress(done, total);
            }
        }
        optimizer.zero_grad();
        Ok(())
    }

    /// Top-1 of `arch` on `val` with the supernet's weights.
    fn fitness(&self, arch: &Arch, val: &dyn PrepareData) -> anyhow::Result<f64> {
        self.set(Some(arch.clone()));
        let (mut right, mut seen) = (0i64, 0i64);
        tch::no_grad(|| -> anyhow::Result<()> {
            for batch in val.batches(0) {
                let (images, labels) = batch?;
                let predicted = val.forward(&images, false).logits.argmax(1, false);
                right += predicted.eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
                seen += labels.size()[0];
            }
            Ok(())
        })?;
        ensure!(seen > 0, "NOAH search: the validation split is empty");
        Ok(100.0 * right as f64 / seen as f64)
    }

    /// The evolutionary search; returns the best candidate with its top-1.
    fn evolve(&self, val: &dyn PrepareData, report: &dyn PrepareData, seed: u64) -> anyhow::Result<(Arch, f64)> {
        let spec = &self.spec;
        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, u64::MAX, 0));
        let mut accuracy: HashMap<Arch, f64> = HashMap::new();
        let total = (spec.population * (spec.generations + 1)) as u64;
        let mut evaluated = 0u64;
        // NOAH's `is_legal`: within the limits and not evaluated before; evaluates it.
        let mut legal = |cand: &Arch, accuracy: &mut HashMap<Arch, f64>| -> anyhow::Result<bool> {
            if accuracy.contains_key(cand) {
                return Ok(false);
            }
            let n = arch_params(cand, &self.widths);
            if n > spec.param_limit || n < spec.min_param_limit {
                return Ok(false);
            }
            accuracy.insert(cand.clone(), self.fitness(cand, val)?);
            evaluated += 1;
            report.progress(evaluated.min(total - 1), total);
            Ok(true)
        };
        let mut candidates: Vec<Arch> = Vec::new();
        let mut top: Vec<Arch> = Vec::new();
        for generation in 0..=spec.generations {
            // Random candidates fill the population up (bounded: a small space may run out).
            let wanted = spec.population.saturating_sub(candidates.len());
            propose(&mut candidates, wanted, 100 * spec.population, || self.random(&mut rng), |c| legal(c, &mut accuracy))?;
            ensure!(
                !candidates.is_empty() || !top.is_empty(),
                "NOAH search: no candidate within the parameter limits ({}..={}) was found; widen `search.param_limit`",
                spec.min_param_limit,
                spec.param_limit
            );
            // The ranking; ties keep their order, as Python's stable sort does.
            top.append(&mut candidates);
            top.sort_by(|a, b| accuracy[b].partial_cmp(&accuracy[a]).expect("accuracies are finite"));
            top.truncate(spec.select);
            tracing::debug!("NOAH search: generation {generation}, best top-1 {:.2}", accuracy[&top[0]]);
            if generation == spec.generations {
                break;
            }
            let mutate = || self.mutate(top.choose(&mut rng).expect("non-empty"), &mut rng);
            propose(&mut candidates, spec.mutations, 10 * spec.mutations, mutate, |c| legal(c, &mut accuracy))?;
            let cross = || {
                let (a, b) = (top.choose(&mut rng).expect("non-empty"), top.choose(&mut rng).expect("non-empty"));
                Self::crossover(a, b, &mut rng)
            };
            propose(&mut candidates, spec.crossovers, 10 * spec.crossovers, cross, |c| legal(c, &mut accuracy))?;
        }
        report.progress(total, total);
        let best = top.swap_remove(0);
        let acc = accuracy[&best];
        Ok((best, acc))
    }
}

/// NOAH's bounded proposal loops: adds up to `wanted` candidates that `make` proposes and `legal`
/// accepts (and evaluates), giving up after `tries` proposals.
fn propose(
    out: &mut Vec<Arch>,
    wanted: usize,
    tries: usize,
    mut make: impl FnMut() -> Arch,
    mut legal: impl FnMut(&Arch) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut added = 0;
    for _ in 0..tries {
        if added == wanted {
            break;
        }
        let cand = make();
        if legal(&cand)? {
            out.push(cand);
            added += 1;
        }
    }
    Ok(())
}

fn sizes(t: &Tensor) -> anyhow::Result<Vec<i64>> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).to_device(Device::Cpu).reshape([-1])).context("not an integer vector")
}

impl Prepare for Search {
    fn describe(&self) -> String {
        let s = &self.spec;
        let split = |x: &Option<String>| x.as_deref().map_or("the training data".to_string(), |v| format!("split `{v}`"));
        format!(
            "NOAH search: a supernet trained {} epochs on {}, then {} generations of {} candidates (at most {} parameters) ranked on {}",
            s.supernet.epochs,
            split(&s.supernet_split),
            s.generations,
            s.population,
            s.param_limit,
            split(&s.val_split)
        )
    }

    fn run(&self, data: &dyn PrepareData) -> anyhow::Result<Vec<(String, Tensor)>> {
        let owned_train = self.spec.supernet_split.as_deref().map(|s| data.split(s, true)).transpose()?;
        let owned_val = self.spec.val_split.as_deref().map(|s| data.split(s, false)).transpose()?;
        let train = owned_train.as_deref().unwrap_or(data);
        let val = owned_val.as_deref().unwrap_or(data);
        // The supernet trains the method's and the head's variables; the chosen sub-network trains
        // from where they started.
        let initial: Vec<(Tensor, Tensor)> = data.parameters().into_iter().map(|(_, t)| (t.shallow_clone(), t.detach().copy())).collect();
        let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
        let searched = self.train_supernet(train, data, seed).and_then(|()| self.evolve(val, data, seed));
        tch::no_grad(|| {
            for (mut var, start) in initial {
                var.copy_(&start);
                if var.grad().defined() {
                    var.zero_grad();
                }
            }
        });
        let (best, acc) = match searched {
            Ok(r) => r,
            Err(e) => {
                self.set(None);
                return Err(e);
            }
        };
        let params = arch_params(&best, &self.widths);
        tracing::info!(
            "NOAH search chose prompt {:?}, LoRA {:?}, adapter {:?}: {params} parameters, top-1 {acc:.2}",
            best.prompt,
            best.lora,
            best.adapter
        );
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some((params, acc));
        self.set(Some(best));
        self.result()
    }

    fn apply(&self, result: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        let mut arch = self.allocated.clone();
        for (m, name) in MODULES.iter().enumerate() {
            let key = format!("arch.{name}");
            let t = result.get(&key).with_context(|| format!("no `{key}` (NOAH's searched sizes)"))?;
            let dims = sizes(t).with_context(|| format!("`{key}`"))?;
            ensure!(dims.len() == self.blocks(), "`{key}` has {} sizes, expected one per block ({})", dims.len(), self.blocks());
            let allowed = module(&self.allocated, m);
            if let Some(l) = (0..dims.len()).find(|&l| dims[l] < 0 || dims[l] > allowed[l]) {
                bail!("`{key}`: block {l} has size {}, outside 0..={} (this search space)", dims[l], allowed[l]);
            }
            *module_mut(&mut arch, m) = dims;
        }
        let accuracy = result.get("val_top1").map(|t| t.double_value(&[]));
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some((arch_params(&arch, &self.widths), accuracy.unwrap_or(f64::NAN)));
        self.set(Some(arch));
        Ok(())
    }

    fn unused_params(&self) -> i64 {
        let guard = self.arch.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map_or(0, |chosen| arch_params(&self.allocated, &self.widths) - arch_params(chosen, &self.widths))
    }

    fn is_ready(&self) -> bool {
        self.arch.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn result(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        let guard = self.arch.read().unwrap_or_else(|e| e.into_inner());
        let arch = guard.as_ref().context("NOAH: no sub-network has been chosen yet")?;
        let mut out: Vec<(String, Tensor)> =
            MODULES.iter().enumerate().map(|(m, name)| (format!("arch.{name}"), Tensor::from_slice(module(arch, m)))).collect();
        if let Some((params, acc)) = *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            out.push(("params".into(), Tensor::from(params)));
            if acc.is_finite() {
                out.push(("val_top1".into(), Tensor::from(acc)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(m_prob: f64, s_prob: f64) -> Search {
        let spec = SearchSpec { depth: vec![1, 2, 3, 4], m_prob, s_prob, ..SearchSpec::default() };
        Search::new(spec, SharedArch::default(), vec![8; 4]).unwrap()
    }

    fn depth(dims: &[i64]) -> usize {
        dims.iter().position(|&d| d == 0).unwrap_or(dims.len())
    }

    #[test]
    fn random_candidates_fill_a_prefix_of_the_blocks_from_the_space() {
        let s = search(0.2, 0.4);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let a = s.random(&mut rng);
            for m in 0..3 {
                let dims = module(&a, m);
                let d = depth(dims);
                assert!((1..=4).contains(&d) && dims[d..].iter().all(|&x| x == 0), "{dims:?}");
                assert!(dims[..d].iter().all(|x| [1, 5, 10].contains(x)), "{dims:?}");
            }
        }
    }

    /// NOAH's mutation changes a module only through its depth: without a new depth it is a copy;
    /// with one, the blocks both depths share keep their sizes.
    #[test]
    fn mutation_changes_depths_only_as_noah_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let keep = search(1.0, 0.0);
        let parent = keep.random(&mut rng);
        assert_eq!(keep.mutate(&parent, &mut rng), parent);
        let redraw = search(1.0, 1.0);
        let mut changed = 0;
        for _ in 0..100 {
            let child = redraw.mutate(&parent, &mut rng);
            for m in 0..3 {
                let (p, c) = (module(&parent, m), module(&child, m));
                let shared = depth(p).min(depth(c));
                assert_eq!(p[..shared], c[..shared]);
                changed += (p != c) as usize;
            }
        }
        assert!(changed > 0, "a new depth never changed a module");
    }

    #[test]
    fn crossover_takes_each_module_whole_from_a_parent() {
        let s = search(0.2, 0.4);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (a, b) = (s.random(&mut rng), s.random(&mut rng));
        let mut seen = [[false; 2]; 3];
        for _ in 0..64 {
            let c = Search::crossover(&a, &b, &mut rng);
            for (m, seen) in seen.iter_mut().enumerate() {
                let from_a = module(&c, m) == module(&a, m);
                assert!(from_a || module(&c, m) == module(&b, m));
                seen[from_a as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| s[0] && s[1]) || a == b);
    }
}
