//! One registry of components, collected with `inventory` from every linked crate.
//!
//! An entry has a kind, a scope (the crate that registered it: `core`, `cls`, `video`, `dense`), a
//! name, a one-line doc and a parser that reads its config node into the component's typed config.
//! A config node selects an entry with `type: Name` (or `type: scope.Name` when the bare name is
//! registered by several crates); the rest of the node is that component's typed config, so a
//! misspelt key is found while the config is read, before anything is built.
//!
//! Register with [`register!`](crate::register); read a component from config with [`Component`].

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use serde::de::{Deserialize, Deserializer};

use crate::config::error::did_you_mean;
use crate::config::{ConfigError, Node, RawNode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Backbone,
    Method,
    Neck,
    Head,
    Model,
    Dataset,
    Transform,
    Evaluator,
    Optimizer,
    Scheduler,
    Hook,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Backbone,
        Kind::Method,
        Kind::Neck,
        Kind::Head,
        Kind::Model,
        Kind::Dataset,
        Kind::Transform,
        Kind::Evaluator,
        Kind::Optimizer,
        Kind::Scheduler,
        Kind::Hook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Backbone => "backbone",
            Kind::Method => "method",
            Kind::Neck => "neck",
            Kind::Head => "head",
            Kind::Model => "model",
            Kind::Dataset => "dataset",
            Kind::Transform => "transform",
            Kind::Evaluator => "evaluator",
            Kind::Optimizer => "optimizer",
            Kind::Scheduler => "scheduler",
            Kind::Hook => "hook",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s.to_lowercase().trim_end_matches('s'))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a config node (without its `type` key) at a key path into a boxed typed config, itself
/// boxed as `Box<dyn Any>` holding the kind's trait object (`Box<dyn BackboneSpec>`, ...).
pub type ParseFn = fn(&Node, &str) -> Result<Box<dyn Any>, ConfigError>;

pub struct Entry {
    pub kind: Kind,
    pub scope: &'static str,
    pub name: &'static str,
    pub doc: &'static str,
    pub parse: ParseFn,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.qualified_name())
    }
}

impl Entry {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.scope, self.name)
    }
}

inventory::collect!(Entry);

/// Registers a component. `$spec` is its typed config (a `serde::Deserialize` struct whose defaults
/// are the component's documented defaults) and `$trait` the kind's spec trait it implements.
///
/// ```ignore
/// vpetl_core::register!(Backbone, "core", "ViT", VitSpec as dyn BackboneSpec, "Vision Transformer");
/// ```
#[macro_export]
macro_rules! register {
    ($kind:ident, $scope:literal, $name:literal, $spec:ty as $trait:ty, $doc:literal) => {
        $crate::inventory::submit! {
            $crate::registry::Entry {
                kind: $crate::registry::Kind::$kind,
                scope: $scope,
                name: $name,
                doc: $doc,
                parse: |node, path| {
                    let spec: $spec = $crate::config::from_node(node, path)?;
                    let boxed: ::std::boxed::Box<$trait> = ::std::boxed::Box::new(spec);
                    Ok(::std::boxed::Box::new(boxed))
                },
            }
        }
    };
}

/// The entries sorted by (kind, name, scope), checked for duplicates on first use.
pub fn entries() -> &'static [&'static Entry] {
    static SORTED: OnceLock<Vec<&'static Entry>> = OnceLock::new();
    SORTED.get_or_init(|| {
        let mut all: Vec<&'static Entry> = inventory::iter::<Entry>.into_iter().collect();
        all.sort_by_key(|e| (e.kind, e.name, e.scope));
        let mut seen: BTreeMap<(Kind, &str, &str), ()> = BTreeMap::new();
        for e in &all {
            if seen.insert((e.kind, e.scope, e.name), ()).is_some() {
                panic!("registry: {} `{}` is registered twice", e.kind, e.qualified_name());
            }
        }
        all
    })
}

/// Checks the registry once at start-up (duplicate names fail here, not at first lookup).
pub fn init() {
    let _ = entries();
}

pub fn of_kind(kind: Kind) -> impl Iterator<Item = &'static Entry> {
    entries().iter().copied().filter(move |e| e.kind == kind)
}

/// Finds `name` (bare or `scope.Name`) among the entries of `kind`.
pub fn lookup(kind: Kind, name: &str) -> Result<&'static Entry, String> {
    let candidates: Vec<&Entry> = of_kind(kind).collect();
    if let Some((scope, bare)) = name.split_once('.') {
        if let Some(e) = candidates.iter().find(|e| e.scope == scope && e.name == bare) {
            return Ok(e);
        }
    }
    let matches: Vec<&&Entry> = candidates.iter().filter(|e| e.name == name).collect();
    match matches.len() {
        1 => Ok(matches[0]),
        0 => {
            let names: Vec<String> = candidates.iter().map(|e| e.name.to_string()).collect();
            let qualified: Vec<String> = candidates.iter().map(|e| e.qualified_name()).collect();
            let hint = did_you_mean(name, names.iter().chain(qualified.iter()).map(String::as_str));
            Err(format!(
                "unknown {kind} type `{name}`{hint} (registered {kind}s: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            ))
        }
        _ => Err(format!(
            "{kind} type `{name}` is ambiguous; write one of {}",
            matches.iter().map(|e| format!("`{}`", e.qualified_name())).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A kind's spec trait object type, so that [`Component`] knows which entries to search.
pub trait KindOf: 'static {
    const KIND: Kind;
}

/// A component read from config: the registry entry its `type` selected and its typed config.
pub struct Component<T: ?Sized + KindOf> {
    pub entry: &'static Entry,
    pub spec: Box<T>,
    /// The node as written (with `type`), for dumping and hashing.
    pub node: Node,
    pub path: String,
    _kind: PhantomData<fn() -> T>,
}

impl<T: ?Sized + KindOf> Component<T> {
    /// Reads a component from a node at a key path.
    pub fn from_node(node: &Node, path: &str) -> Result<Self, ConfigError> {
        let locate = |e: ConfigError| e.at_key(path.to_string()).in_file(node.origin.as_str());
        if node.as_map().is_none() {
            return Err(locate(ConfigError::new(format!(
                "expected a {} mapping with a `type` key, found {} ({})",
                T::KIND,
                node.kind_name(),
                node.brief()
            ))));
        }
        let type_path = crate::config::node::join_path(path, "type");
        let type_node = node.get("type").ok_or_else(|| {
            locate(ConfigError::new(format!(
                "missing `type` (registered {}s: {})",
                T::KIND,
                of_kind(T::KIND).map(|e| e.name).collect::<Vec<_>>().join(", ")
            )))
        })?;
        let name = type_node.as_str().ok_or_else(|| {
            ConfigError::new(format!("`type` must be a string, found {}", type_node.kind_name()))
                .at_key(type_path.clone())
                .in_file(type_node.origin.as_str())
        })?;
        let entry = lookup(T::KIND, name)
            .map_err(|msg| ConfigError::new(msg).at_key(type_path.clone()).in_file(type_node.origin.as_str()))?;
        let mut rest = node.clone();
        rest.remove("type");
        let any = (entry.parse)(&rest, path).map_err(locate)?;
        let spec = *any.downcast::<Box<T>>().unwrap_or_else(|_| {
            panic!("registry entry {} was registered with a trait other than its kind's", entry.qualified_name())
        });
        Ok(Component { entry, spec, node: node.clone(), path: path.to_string(), _kind: PhantomData })
    }
}

/// Passes a located config error out of a `Deserialize` impl that reads a [`RawNode`].
pub(crate) fn config_error_to_serde<E: serde::de::Error>(e: ConfigError) -> E {
    ConfigErrorCarrier::wrap(e)
}

impl<'de, T: ?Sized + KindOf> Deserialize<'de> for Component<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawNode::deserialize(d)?;
        Component::from_node(&raw.node, &raw.path).map_err(ConfigErrorCarrier::wrap)
    }
}

impl<T: ?Sized + KindOf> fmt::Debug for Component<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Component({} at {})", self.entry.qualified_name(), self.path)
    }
}

/// Passes a fully located [`ConfigError`] through serde's generic error type: our deserializer's
/// `Error::custom` decodes it back (see [`ConfigError`]'s `serde::de::Error` impl), any other
/// deserializer shows the message.
struct ConfigErrorCarrier;

impl ConfigErrorCarrier {
    fn wrap<E: serde::de::Error>(e: ConfigError) -> E {
        E::custom(LocatedMessage(e))
    }
}

/// Marks a message that already carries its location, so the deserializer keeps it as is.
pub(crate) struct LocatedMessage(pub ConfigError);

impl fmt::Display for LocatedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", LOCATED_PREFIX, serde_json::to_string(&LocatedParts::from(&self.0)).unwrap())
    }
}

pub(crate) const LOCATED_PREFIX: &str = "\u{1}located:";

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct LocatedParts {
    file: Option<String>,
    line: Option<usize>,
    key: Option<String>,
    msg: String,
}

impl From<&ConfigError> for LocatedParts {
    fn from(e: &ConfigError) -> Self {
        LocatedParts { file: e.file.clone(), line: e.line, key: e.key.clone(), msg: e.msg.clone() }
    }
}

impl From<LocatedParts> for ConfigError {
    fn from(p: LocatedParts) -> Self {
        ConfigError { file: p.file, line: p.line, key: p.key, msg: p.msg }
    }
}
