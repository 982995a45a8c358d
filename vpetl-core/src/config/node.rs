//! The merged configuration tree. Every node remembers the file (or `--cfg-options`) it came from,
//! so that errors found long after merging still name the file a user has to edit.

use std::fmt;
use std::sync::Arc;

/// Where a node's value was written: a config file path, `--cfg-options`, or a built-in default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(pub Arc<str>);

impl Origin {
    pub fn new(s: impl AsRef<str>) -> Self {
        Origin(Arc::from(s.as_ref()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    /// Insertion-ordered; keys are unique (the loader rejects duplicates).
    Map(Vec<(String, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub origin: Origin,
}

impl Node {
    pub fn new(value: Value, origin: Origin) -> Self {
        Node { value, origin }
    }

    pub fn empty_map(origin: Origin) -> Self {
        Node::new(Value::Map(Vec::new()), origin)
    }

    pub fn kind_name(&self) -> &'static str {
        self.value.kind_name()
    }

    pub fn as_map(&self) -> Option<&Vec<(String, Node)>> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(String, Node)>> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Child of a map by key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Removes and returns a map entry.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let m = self.as_map_mut()?;
        let i = m.iter().position(|(k, _)| k == key)?;
        Some(m.remove(i).1)
    }

    /// Inserts or replaces a map entry, keeping the position of an existing key.
    pub fn insert(&mut self, key: &str, node: Node) {
        if let Some(m) = self.as_map_mut() {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = node,
                None => m.push((key.to_string(), node)),
            }
        }
    }

    /// Follows a dotted path (`model.backbone.depth`, `custom_hooks.0.type`).
    pub fn lookup(&self, dotted: &str) -> Option<&Node> {
        if dotted.is_empty() {
            return Some(self);
        }
        let mut cur = self;
        for seg in dotted.split('.') {
            cur = match &cur.value {
                Value::Map(_) => cur.get(seg)?,
                Value::List(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    /// A short rendering of a scalar for error messages.
    pub fn brief(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::List(l) => format!("a list of {}", l.len()),
            Value::Map(_) => "a mapping".into(),
        }
    }

    pub fn to_yaml_value(&self) -> serde_norway::Value {
        use serde_norway::Value as Y;
        match &self.value {
            Value::Null => Y::Null,
            Value::Bool(b) => Y::Bool(*b),
            Value::Int(i) => Y::Number((*i).into()),
            Value::Float(f) => Y::Number((*f).into()),
            Value::Str(s) => Y::String(s.clone()),
            Value::List(l) => Y::Sequence(l.iter().map(Node::to_yaml_value).collect()),
            Value::Map(m) => {
                let mut out = serde_norway::Mapping::new();
                for (k, v) in m {
                    out.insert(Y::String(k.clone()), v.to_yaml_value());
                }
                Y::Mapping(out)
            }
        }
    }

    pub fn to_yaml_string(&self) -> String {
        serde_norway::to_string(&self.to_yaml_value()).expect("a config tree always serialises")
    }
}

impl Value {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Joins a parent key path and a child segment: `("model", "backbone") -> "model.backbone"`.
pub fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}
