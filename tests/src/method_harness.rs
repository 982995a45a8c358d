//! The five checks every PETL method passes, on tiny backbones:
//! 1. no-op start: where the paper defines one, the output at initialisation equals the frozen
//!    backbone's;
//! 2. gradients: after one optimiser step (so that zero-initialised factors have moved), one
//!    backward pass gives every trainable tensor a non-zero gradient and no frozen tensor any;
//! 3. the trainable count equals the closed form;
//! 4. merge: merged and unmerged models agree (max |Δ| ≤ 1e-5);
//! 5. parity with an independent plain-PyTorch re-implementation (`tests/python/petl_reference.py`)
//!    given the same weights: outputs and gradients agree (≤ 1e-5).
//!
//! Methods with a prepare step (SCT, GPS, NOAH's search) are prepared on [`synthetic_data`] right
//! after they are built, so every check sees the model that would train; the reference receives
//! the prepare result (`prepared.methods.<name>.<key>` in weights.safetensors).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use tch::{nn, Device, Kind, Tensor};
use vpetl_core::backbones::ForwardOpts;
use vpetl_core::config::RunConfig;
use vpetl_core::model::Model;

/// A 2-block ViT on 32 px images (patch 8, width 32, 4 heads).
pub const TINY_VIT: &str = "{type: ViT, img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}";
/// A 2-stage Swin on 32 px images (patch 4, width 16, window 4).
pub const TINY_SWIN: &str =
    "{type: Swin, img_size: 32, patch_size: 4, embed_dim: 16, depths: [2, 2], num_heads: [2, 4], window_size: 4}";
pub const NUM_CLASSES: i64 = 5;

/// A built model and its variables.
pub struct Built {
    pub vs: nn::VarStore,
    pub model: Box<dyn Model>,
}

/// libtorch's random generator is process-wide and tests run on parallel threads: each check holds
/// this lock so that its seeded initialisation is not interleaved with another test's draws.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the lock (for a test that seeds outside the harness, e.g. a training run).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds an ImageClassifier with `backbone` (a YAML flow mapping) and `methods` (a YAML list).
pub fn build(backbone: &str, methods: &str) -> Built {
    let _serial = serial();
    build_unlocked(backbone, methods)
}

fn build_unlocked(backbone: &str, methods: &str) -> Built {
    crate::init();
    tch::manual_seed(0);
    let yaml = format!(
        "model:\n  type: ImageClassifier\n  backbone: {backbone}\n  head: {{type: LinearHead, num_classes: {NUM_CLASSES}}}\n  methods: {methods}\n"
    );
    let node = vpetl_core::config::load::parse_yaml(&yaml, &vpetl_core::config::Origin::new("<test>")).unwrap();
    let cfg = RunConfig::from_node(&node).unwrap_or_else(|e| panic!("{e}"));
    let vs = nn::VarStore::new(Device::Cpu);
    let model = cfg.model.unwrap().spec.build(&vs).unwrap_or_else(|e| panic!("{e:#}"));
    if !model.prepare_steps().is_empty() {
        let data = SyntheticData { vs: Some(&vs), ..SyntheticData::new_unlocked(model.as_ref(), 0) };
        vpetl_core::engine::prepare::run_missing(model.as_ref(), &vs, &data).unwrap_or_else(|e| panic!("{e:#}"));
    }
    Built { vs, model }
}

/// A fixed training set for prepare steps: 3 batches of 4 random 32 px images drawn after
/// re-seeding libtorch's generator with `seed`, labels cycling through the classes.
pub struct SyntheticData<'a> {
    model: &'a dyn Model,
    /// The model's variables, for steps that train (none unless set).
    pub vs: Option<&'a nn::VarStore>,
    pub images: Vec<Tensor>,
    pub labels: Vec<Tensor>,
}

impl<'a> SyntheticData<'a> {
    /// Draws the batches under the generator's lock (see [`input`]).
    pub fn new(model: &'a dyn Model, seed: i64) -> Self {
        let _serial = serial();
        Self::new_unlocked(model, seed)
    }

    fn new_unlocked(model: &'a dyn Model, seed: i64) -> Self {
        tch::manual_seed(seed);
        let g = Tensor::randn([12, 3, 32, 32], (Kind::Float, Device::Cpu));
        let labels = Tensor::arange(12, (Kind::Int64, Device::Cpu)).remainder(NUM_CLASSES);
        SyntheticData { model, vs: None, images: g.chunk(3, 0), labels: labels.chunk(3, 0) }
    }
}

impl vpetl_core::methods::PrepareData for SyntheticData<'_> {
    fn batches(&self, _pass: u64) -> Box<dyn Iterator<Item = anyhow::Result<(Tensor, Tensor)>> + '_> {
        Box::new(self.images.iter().zip(&self.labels).map(|(x, y)| Ok((x.shallow_clone(), y.shallow_clone()))))
    }
    fn len(&self) -> usize {
        self.images.len()
    }
    fn num_classes(&self) -> i64 {
        NUM_CLASSES
    }
    fn forward(&self, images: &Tensor, train: bool) -> vpetl_core::model::ModelOutput {
        self.model.forward(images, ForwardOpts { train, collect_blocks: false })
    }
    fn progress(&self, _: u64, _: u64) {}
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.vs.map(vpetl_core::engine::prepare::trainable_variables).unwrap_or_default()
    }
}

/// Every prepare result of a built model, named `methods.<name>.<key>`.
pub fn prepared(b: &Built) -> Vec<(String, Tensor)> {
    vpetl_core::engine::prepare::results(b.model.as_ref()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Two random 32 px images, drawn under the generator's lock (a test's draws must not interleave
/// with another test's seeded initialisation).
pub fn input() -> Tensor {
    let _serial = serial();
    input_unlocked()
}

fn input_unlocked() -> Tensor {
    Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu))
}

fn logits(b: &Built, x: &Tensor) -> Tensor {
    b.model.forward(x, ForwardOpts { train: false, collect_blocks: false }).logits
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Copies every variable of `from` whose name exists in `to`.
fn copy_shared(from: &nn::VarStore, to: &nn::VarStore) {
    let src = from.variables();
    tch::no_grad(|| {
        for (name, mut var) in to.variables() {
            if let Some(v) = src.get(&name) {
                var.copy_(v);
            }
        }
    });
}

/// Check 1: the model with `methods` starts where the plain backbone is.
pub fn assert_noop_at_init(backbone: &str, methods: &str) {
    let _serial = serial();
    let with = build_unlocked(backbone, methods);
    let plain = build_unlocked(backbone, "[]");
    copy_shared(&with.vs, &plain.vs);
    let x = input_unlocked();
    let d = tch::no_grad(|| max_diff(&logits(&with, &x), &logits(&plain, &x)));
    assert!(d <= 1e-6, "output at initialisation differs from the frozen backbone: max |Δ| = {d:e}");
}

fn loss(b: &Built, x: &Tensor, train: bool) -> Tensor {
    let out = b.model.forward(x, ForwardOpts { train, collect_blocks: false }).logits;
    let w = Tensor::linspace(-1.0, 1.0, out.numel() as i64, (Kind::Float, Device::Cpu)).view_as(&out);
    (out * w).sum(Kind::Float)
}

/// Check 2: gradients exactly on the trainable set.
pub fn assert_gradients_on_trainable_only(backbone: &str, methods: &str) {
    let _serial = serial();
    let b = build_unlocked(backbone, methods);
    let x = input_unlocked();
    let vars = b.vs.variables();
    // One plain SGD step so that factors initialised at zero have moved.
    loss(&b, &x, false).backward();
    tch::no_grad(|| {
        for var in vars.values() {
            let mut g = var.grad();
            if g.defined() {
                let mut v = var.shallow_clone();
                v -= &g * 0.1;
                let _ = g.zero_();
            }
        }
    });
    loss(&b, &x, false).backward();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let g = var.grad();
        if var.requires_grad() {
            assert!(g.defined(), "trainable `{name}` got no gradient");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "trainable `{name}` got a zero gradient");
        } else {
            assert!(!g.defined(), "frozen `{name}` got a gradient");
        }
    }
}

/// Check 3: trainable parameters outside the head equal the closed form.
pub fn assert_trainable_count(backbone: &str, methods: &str, expected: i64) {
    let _serial = serial();
    let b = build_unlocked(backbone, methods);
    let counts = b.model.param_counts();
    assert_eq!(counts.trainable_without_head(), expected, "trainable parameters (head excluded)\n{counts}");
}

/// Gives every method variable random values, so that merges and parity are not checked on zeros.
/// Buffers (running statistics) get positive ones, valid as variances.
pub fn randomize_methods(vs: &nn::VarStore) {
    let buffers = vpetl_core::methods::trainability::buffers(vs);
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if buffers.contains_key(&name) {
                var.copy_(&(Tensor::rand_like(&var) + 0.5));
            } else if name.starts_with("methods.") {
                var.copy_(&(Tensor::randn_like(&var) * 0.1));
            }
        }
    });
}

/// Check 4: merging gives the same outputs.
pub fn assert_merge_matches(backbone: &str, methods: &str) {
    let _serial = serial();
    let with = build_unlocked(backbone, methods);
    randomize_methods(&with.vs);
    let weights = with.model.merged_backbone(&with.vs).unwrap_or_else(|e| panic!("{e:#}"));
    let plain = build_unlocked(backbone, "[]");
    copy_shared(&with.vs, &plain.vs);
    tch::no_grad(|| {
        for (name, mut var) in plain.vs.variables() {
            if let Some(w) = name.strip_prefix("backbone.").and_then(|n| weights.get(n)) {
                var.copy_(w);
            }
        }
    });
    let x = input_unlocked();
    let d = tch::no_grad(|| max_diff(&logits(&with, &x), &logits(&plain, &x)));
    assert!(d <= 1e-5, "merged and unmerged outputs differ: max |Δ| = {d:e}");
}

/// Check 5: outputs and gradients equal an independent plain-PyTorch re-implementation.
/// `method` names the reference in `tests/python/petl_reference.py`; `options` is its JSON config.
pub fn assert_matches_pytorch_reference(backbone_json: &str, backbone: &str, methods: &str, method: &str, options: &str) {
    let _serial = serial();
    let b = build_unlocked(backbone, methods);
    randomize_methods(&b.vs);
    let dir = tempfile::tempdir().unwrap();
    let x = input_unlocked();
    let mut named: Vec<(String, Tensor)> = b.vs.variables().into_iter().map(|(k, v)| (k, v.detach().contiguous())).collect();
    named.extend(prepared(&b).into_iter().map(|(k, t)| (format!("prepared.{k}"), t.contiguous())));
    Tensor::write_safetensors(&named, dir.path().join("weights.safetensors")).unwrap();
    Tensor::write_safetensors(&[("input", &x)], dir.path().join("input.safetensors")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/petl_reference.py");
    let python = std::env::var("VPETL_PYTHON").expect("VPETL_PYTHON is set by scripts/setup");
    let out = Command::new(python)
        .arg(script)
        .arg(dir.path())
        .args(["--backbone", backbone_json, "--num-classes", &NUM_CLASSES.to_string(), "--method", method, "--options", options])
        .output()
        .unwrap();
    assert!(out.status.success(), "PyTorch reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let expected: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("expected.safetensors")).unwrap().into_iter().collect();

    let l = loss(&b, &x, false);
    let logits_now = logits(&b, &x);
    let d = max_diff(&logits_now, &expected["logits"]);
    assert!(d <= 1e-5, "logits differ from the PyTorch reference: max |Δ| = {d:e}");
    l.backward();
    let mut compared = 0;
    for (name, var) in b.vs.variables() {
        if !var.requires_grad() || !name.starts_with("methods.") {
            continue;
        }
        let want = expected.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("the reference has no gradient for `{name}`"));
        let d = max_diff(&var.grad(), want);
        let scale = want.abs().max().double_value(&[]).max(1.0);
        assert!(d <= 1e-5 * scale, "gradient of `{name}` differs from the reference: max |Δ| = {d:e}");
        compared += 1;
    }
    assert!(compared > 0, "no method gradient was compared");
}

/// The error message of a model config with `backbone` and `methods` that must fail, whether the
/// config is rejected when read or the model when built.
pub fn build_error(backbone: &str, methods: &str) -> String {
    let yaml = format!(
        "model:\n  type: ImageClassifier\n  backbone: {backbone}\n  head: {{type: LinearHead, num_classes: 2}}\n  methods: {methods}\n"
    );
    crate::init();
    let node = vpetl_core::config::load::parse_yaml(&yaml, &vpetl_core::config::Origin::new("t.yaml")).unwrap();
    let cfg = match RunConfig::from_node(&node) {
        Ok(cfg) => cfg,
        Err(e) => return e.to_string(),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    cfg.model.unwrap().spec.build(&vs).err().expect("the config must fail").to_string()
}

/// A backbone with only the sites it is given (`name:kind`, kinds linear / branch / tokens), to
/// exercise methods' missing-site errors (`type: SitesOnly`, registered in scope `test`).
#[derive(Debug, serde::Deserialize)]
pub struct SitesOnlySpec {
    sites: Vec<String>,
}

struct SitesOnly {
    sites: vpetl_core::backbones::sites::SiteMap,
}

impl vpetl_core::backbones::BackboneSpec for SitesOnlySpec {
    fn build(&self, vs: nn::Path) -> anyhow::Result<Box<dyn vpetl_core::backbones::Backbone>> {
        use vpetl_core::backbones::sites::SiteKind;
        let mut sites = vpetl_core::backbones::sites::SiteMap::default();
        for s in &self.sites {
            let (name, kind) = s.split_once(':').ok_or_else(|| anyhow::anyhow!("site `{s}` is not name:kind"))?;
            match kind {
                "linear" => {
                    let layer = nn::linear(&vs / "layer", 8, 8, Default::default());
                    sites.linear(name.to_string(), &layer);
                }
                "branch" => {
                    sites.plain(name.to_string(), SiteKind::Branch, 8, 0);
                }
                "tokens" => {
                    sites.plain(name.to_string(), SiteKind::Tokens, 8, 0);
                }
                _ => anyhow::bail!("unknown kind {kind}"),
            };
        }
        Ok(Box::new(SitesOnly { sites }))
    }
    fn feature_dim(&self) -> i64 {
        8
    }
}

impl vpetl_core::backbones::Backbone for SitesOnly {
    fn sites(&self) -> &vpetl_core::backbones::sites::SiteMap {
        &self.sites
    }
    fn check_input(&self, _: &[i64]) -> anyhow::Result<()> {
        Ok(())
    }
    fn forward(
        &self,
        _: &Tensor,
        _: &vpetl_core::backbones::sites::Hooks,
        _: ForwardOpts,
    ) -> vpetl_core::backbones::BackboneOutput {
        unreachable!("SitesOnly only exists to attach methods to")
    }
    fn feature_dim(&self) -> i64 {
        8
    }
}

vpetl_core::register!(Backbone, "test", "SitesOnly", SitesOnlySpec as dyn vpetl_core::backbones::BackboneSpec, "a backbone with only the sites it is given");
