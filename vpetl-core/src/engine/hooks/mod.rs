//! Hooks: the pieces of a training run that are not the iteration itself (timing, learning-rate
//! schedule, memory, logging, evaluation, checkpoints), as in mmengine. Each is a registered
//! component; the runner calls every hook at each call point in priority order.
//!
//! Config, with mmengine's keys: `default_hooks` is a mapping from slot name to hook; a slot
//! written without `type` keeps its default hook type (`logger: {interval: 20}`), `~` disables
//! it. `custom_hooks` is a list of extra hooks (`[{type: MyHook, ...}]`), registered by any crate.

pub mod checkpoint;
pub mod evaluation;
pub mod logger;
pub mod memory;
pub mod param_scheduler;
pub mod timer;

use serde::{Deserialize, Deserializer};

use super::state::RunState;
use crate::config::{ConfigError, Node, Origin, RawNode, Value};
use crate::registry::{Component, Kind, KindOf};

/// mmengine's priorities: lower runs first.
pub mod priority {
    pub const VERY_HIGH: i32 = 10;
    pub const HIGH: i32 = 30;
    pub const ABOVE_NORMAL: i32 = 40;
    pub const NORMAL: i32 = 50;
    pub const BELOW_NORMAL: i32 = 60;
    pub const LOW: i32 = 70;
    pub const VERY_LOW: i32 = 90;
}

pub trait HookSpec: std::fmt::Debug {
    fn build(&self) -> anyhow::Result<Box<dyn Hook>>;
}

impl KindOf for dyn HookSpec {
    const KIND: Kind = Kind::Hook;
}

/// Call points of a training run. Every method defaults to doing nothing.
pub trait Hook {
    fn priority(&self) -> i32 {
        priority::NORMAL
    }
    fn before_run(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    fn before_train_epoch(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    /// After the batch was fetched, before the forward pass.
    fn before_train_iter(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    /// After the update; `run.loss` holds the iteration's loss and `run.meta.iter` counts it.
    fn after_train_iter(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    fn after_train_epoch(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    /// After an evaluation; `run.last_metrics` and `run.improved` describe it.
    fn after_val(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    /// After an epoch (epoch loop) or an iteration (iteration loop) and its evaluation, if one
    /// was due: the state is complete, the point to save it.
    fn after_unit(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
    fn after_run(&mut self, _run: &mut RunState) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The default slots and their hook types, in mmengine's order.
pub const DEFAULT_SLOTS: [(&str, &str); 6] = [
    ("timer", "IterTimerHook"),
    ("param_scheduler", "ParamSchedulerHook"),
    ("memory", "MemoryHook"),
    ("logger", "LoggerHook"),
    ("evaluation", "EvaluationHook"),
    ("checkpoint", "CheckpointHook"),
];

/// `default_hooks` as written: the slots the config sets (`None` for a disabled slot).
#[derive(Debug, Default)]
pub struct DefaultHooks {
    pub slots: Vec<(String, Option<Component<dyn HookSpec>>)>,
}

impl<'de> Deserialize<'de> for DefaultHooks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawNode::deserialize(d)?;
        DefaultHooks::from_node(&raw.node, &raw.path).map_err(crate::registry::config_error_to_serde)
    }
}

impl DefaultHooks {
    fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        let locate = |e: ConfigError, key: &str| e.at_key(crate::config::node::join_path(path, key)).in_file(node.origin.as_str());
        let map = match &node.value {
            Value::Null => return Ok(DefaultHooks::default()),
            Value::Map(m) => m,
            _ => return Err(locate(ConfigError::new(format!("expected a mapping of hook slots, found {}", node.kind_name())), "")),
        };
        let mut slots = Vec::new();
        for (key, value) in map {
            let key_path = crate::config::node::join_path(path, key);
            if matches!(value.value, Value::Null) {
                slots.push((key.clone(), None));
                continue;
            }
            let mut value = value.clone();
            if value.as_map().is_some() && value.get("type").is_none() {
                let default_type = DEFAULT_SLOTS.iter().find(|(slot, _)| slot == key).map(|(_, t)| *t).ok_or_else(|| {
                    let names: Vec<&str> = DEFAULT_SLOTS.iter().map(|(s, _)| *s).collect();
                    let hint = crate::config::error::did_you_mean(key, names.iter().copied());
                    locate(
                        ConfigError::new(format!(
                            "`{key}` is not a default hook slot{hint} (slots: {}); give a `type` to add a hook here",
                            names.join(", ")
                        )),
                        key,
                    )
                })?;
                value.insert("type", Node::new(Value::Str(default_type.into()), value.origin.clone()));
            }
            slots.push((key.clone(), Some(Component::from_node(&value, &key_path)?)));
        }
        Ok(DefaultHooks { slots })
    }

    /// The configured slots over the defaults.
    pub fn resolve(&self) -> Result<Vec<(String, Option<Component<dyn HookSpec>>)>, ConfigError> {
        let mut out = Vec::new();
        for (slot, ty) in DEFAULT_SLOTS {
            if self.slots.iter().any(|(s, _)| s == slot) {
                continue;
            }
            let origin = Origin::new("<default hooks>");
            let mut node = Node::empty_map(origin.clone());
            node.insert("type", Node::new(Value::Str(ty.into()), origin));
            out.push((slot.to_string(), Some(Component::from_node(&node, &format!("default_hooks.{slot}"))?)));
        }
        for (slot, c) in &self.slots {
            out.push((slot.clone(), c.as_ref().map(|c| Component::from_node(&c.node, &c.path)).transpose()?));
        }
        Ok(out)
    }
}

/// The hooks of a run, sorted by priority (stable: slot order, then `custom_hooks` order).
pub struct Hooks {
    hooks: Vec<(String, Box<dyn Hook>)>,
}

macro_rules! call_points {
    ($($name:ident),*) => {$(
        pub fn $name(&mut self, run: &mut RunState) -> anyhow::Result<()> {
            for (name, hook) in &mut self.hooks {
                hook.$name(run).map_err(|e| e.context(format!("hook `{name}` ({})", stringify!($name))))?;
            }
            Ok(())
        }
    )*};
}

impl Hooks {
    pub fn build(default_hooks: &DefaultHooks, custom: &[Component<dyn HookSpec>]) -> anyhow::Result<Self> {
        let mut hooks = Vec::new();
        for (slot, c) in default_hooks.resolve()? {
            if let Some(c) = c {
                hooks.push((format!("{slot} ({})", c.entry.name), c.spec.build()?));
            }
        }
        for c in custom {
            hooks.push((c.entry.name.to_string(), c.spec.build()?));
        }
        hooks.sort_by_key(|(_, h)| h.priority());
        Ok(Hooks { hooks })
    }

    pub fn names(&self) -> Vec<&str> {
        self.hooks.iter().map(|(n, _)| n.as_str()).collect()
    }

    call_points!(before_run, before_train_epoch, before_train_iter, after_train_iter, after_train_epoch, after_val, after_unit, after_run);
}
