//! A serde `Deserializer` over [`Node`] that knows where it is: every error carries the key path and
//! the file that wrote the value, unknown keys are rejected with the closest valid name, and type
//! errors say what was expected and what was found.
//!
//! Structs are always strict here (unknown keys are errors); `#[serde(deny_unknown_fields)]` is not
//! needed on config structs. A struct that wants a free-form mapping uses a map type instead.

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::error::{did_you_mean, ConfigError};
use super::node::{join_path, Node, Value};

/// Deserialises a typed config from `node`, which sits at `path` in the whole config.
pub fn from_node<T: de::DeserializeOwned>(node: &Node, path: &str) -> Result<T, ConfigError> {
    T::deserialize(NodeDe { node, path: path.to_string() })
}

pub struct NodeDe<'a> {
    pub node: &'a Node,
    pub path: String,
}

impl NodeDe<'_> {
    fn locate(&self, e: ConfigError) -> ConfigError {
        e.at_key(self.path.clone()).in_file(self.node.origin.as_str())
    }

    fn mismatch(&self, expected: &str) -> ConfigError {
        self.locate(ConfigError::new(format!(
            "expected {expected}, found {} ({})",
            self.node.kind_name(),
            self.node.brief()
        )))
    }
}

/// The name of the newtype struct through which [`RawNode`] asks for the node itself.
pub const RAW_NODE_TOKEN: &str = "$vpetl::RawNode";

thread_local! {
    static RAW_SLOT: RefCell<Option<(Node, String)>> = const { RefCell::new(None) };
}

/// The unparsed node and its key path, for values whose type depends on their content
/// (registered components). Only this crate's deserializer can produce one.
#[derive(Clone, Debug)]
pub struct RawNode {
    pub node: Node,
    pub path: String,
}

impl<'de> de::Deserialize<'de> for RawNode {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vpetl config node")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawNode, E> {
                RAW_SLOT
                    .with(|s| s.borrow_mut().take())
                    .map(|(node, path)| RawNode { node, path })
                    .ok_or_else(|| E::custom("components can only be read from a vpetl config"))
            }
        }
        d.deserialize_newtype_struct(RAW_NODE_TOKEN, V)
    }
}

macro_rules! forward_scalar {
    ($($method:ident => $visit:ident, $variant:ident, $ty:ty, $expected:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
            match &self.node.value {
                Value::$variant(x) => v.$visit(x.clone() as $ty).map_err(|e| self.locate(e)),
                _ => Err(self.mismatch($expected)),
            }
        }
    )*};
}

macro_rules! forward_int {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
            match &self.node.value {
                Value::Int(i) => v.visit_i64(*i).map_err(|e| self.locate(e)),
                _ => Err(self.mismatch("an integer")),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = ConfigError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        let r = match &self.node.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_str(s),
            Value::List(items) => return v.visit_seq(SeqDe { items: items.iter(), path: &self.path, index: 0 }),
            Value::Map(entries) => {
                return v.visit_map(MapDe { entries: entries.iter(), path: &self.path, pending: None })
            }
        };
        r.map_err(|e| self.locate(e))
    }

    forward_scalar! {
        deserialize_bool => visit_bool, Bool, bool, "a boolean (true or false)";
    }

    forward_int!(
        deserialize_i8, deserialize_i16, deserialize_i32, deserialize_i64, deserialize_u8, deserialize_u16,
        deserialize_u32, deserialize_u64
    );

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        match &self.node.value {
            Value::Float(f) => v.visit_f64(*f),
            Value::Int(i) => v.visit_f64(*i as f64),
            _ => return Err(self.mismatch("a number")),
        }
        .map_err(|e| self.locate(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        match &self.node.value {
            Value::Str(s) => v.visit_str(s).map_err(|e| self.locate(e)),
            _ => Err(self.mismatch("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        match &self.node.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        match &self.node.value {
            Value::Null => v.visit_unit(),
            _ => Err(self.mismatch("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, ConfigError> {
        if name == RAW_NODE_TOKEN {
            RAW_SLOT.with(|s| *s.borrow_mut() = Some((self.node.clone(), self.path.clone())));
            return v.visit_unit();
        }
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        match &self.node.value {
            Value::List(items) => v.visit_seq(SeqDe { items: items.iter(), path: &self.path, index: 0 }),
            _ => Err(self.mismatch("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, ConfigError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        match &self.node.value {
            Value::Map(entries) => v.visit_map(MapDe { entries: entries.iter(), path: &self.path, pending: None }),
            _ => Err(self.mismatch("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ConfigError> {
        let Value::Map(entries) = &self.node.value else {
            return Err(self.mismatch("a mapping"));
        };
        for (k, child) in entries {
            if !fields.contains(&k.as_str()) {
                let what = if self.path.is_empty() { "unknown top-level key" } else { "unknown key" };
                let mut valid: Vec<&str> = fields.to_vec();
                valid.sort_unstable();
                return Err(ConfigError::new(format!(
                    "{what} `{k}`{} (valid keys: {})",
                    did_you_mean(k, fields.iter().copied()),
                    valid.join(", ")
                ))
                .at_key(join_path(&self.path, k))
                .in_file(child.origin.as_str()));
            }
        }
        v.visit_map(MapDe { entries: entries.iter(), path: &self.path, pending: None })
            .map_err(|e| self.locate(e))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ConfigError> {
        let (tag, content) = match &self.node.value {
            Value::Str(s) => (s.as_str(), None),
            Value::Map(entries) if entries.len() == 1 => (entries[0].0.as_str(), Some(&entries[0].1)),
            _ => return Err(self.mismatch(&format!("one of {}", variants.join(", ")))),
        };
        if !variants.contains(&tag) {
            return Err(self.locate(ConfigError::new(format!(
                "unknown value `{tag}`{} (expected one of: {})",
                did_you_mean(tag, variants.iter().copied()),
                variants.join(", ")
            ))));
        }
        v.visit_enum(EnumDe { tag, content, path: &self.path, origin_node: self.node })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ConfigError> {
        v.visit_unit()
    }
}

struct SeqDe<'a, I> {
    items: I,
    path: &'a str,
    index: usize,
}

impl<'de, 'a, I: Iterator<Item = &'a Node>> de::SeqAccess<'de> for SeqDe<'a, I> {
    type Error = ConfigError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ConfigError> {
        let Some(node) = self.items.next() else { return Ok(None) };
        let path = join_path(self.path, &self.index.to_string());
        self.index += 1;
        seed.deserialize(NodeDe { node, path }).map(Some)
    }
}

struct MapDe<'a, I> {
    entries: I,
    path: &'a str,
    pending: Option<(&'a String, &'a Node)>,
}

impl<'de, 'a, I: Iterator<Item = &'a (String, Node)>> de::MapAccess<'de> for MapDe<'a, I> {
    type Error = ConfigError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ConfigError> {
        let Some((k, v)) = self.entries.next() else { return Ok(None) };
        self.pending = Some((k, v));
        seed.deserialize(k.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ConfigError> {
        let (k, node) = self.pending.take().expect("serde asks for a key before its value");
        seed.deserialize(NodeDe { node, path: join_path(self.path, k) })
    }
}

struct EnumDe<'a> {
    tag: &'a str,
    content: Option<&'a Node>,
    path: &'a str,
    origin_node: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = ConfigError;
    type Variant = VariantDe<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, VariantDe<'a>), ConfigError> {
        let tag = seed.deserialize(IntoDeserializer::<ConfigError>::into_deserializer(self.tag))?;
        let path = join_path(self.path, self.tag);
        Ok((tag, VariantDe { content: self.content, path, parent: self.origin_node }))
    }
}

struct VariantDe<'a> {
    content: Option<&'a Node>,
    path: String,
    parent: &'a Node,
}

impl<'de> de::VariantAccess<'de> for VariantDe<'_> {
    type Error = ConfigError;

    fn unit_variant(self) -> Result<(), ConfigError> {
        match self.content {
            None | Some(Node { value: Value::Null, .. }) => Ok(()),
            Some(n) => Err(ConfigError::new("this option takes no value")
                .at_key(self.path)
                .in_file(n.origin.as_str())),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, ConfigError> {
        match self.content {
            Some(node) => seed.deserialize(NodeDe { node, path: self.path }),
            None => Err(ConfigError::new("this option needs a value")
                .at_key(self.path)
                .in_file(self.parent.origin.as_str())),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, ConfigError> {
        match self.content {
            Some(node) => de::Deserializer::deserialize_seq(NodeDe { node, path: self.path }, v),
            None => Err(ConfigError::new("this option needs a list").at_key(self.path)),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ConfigError> {
        match self.content {
            Some(node) => de::Deserializer::deserialize_struct(NodeDe { node, path: self.path }, "", fields, v),
            None => Err(ConfigError::new("this option needs a mapping").at_key(self.path)),
        }
    }
}
