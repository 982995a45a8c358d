//! `--cfg-options key=value` overrides, as in mmengine's `DictAction`:
//! - dotted keys address nested mappings, and a number addresses a list element
//!   (`model.methods.0.rank=8`); missing mapping keys are created;
//! - values are typed like YAML scalars (`8` is an integer, `1e-3` a float, `true` a boolean,
//!   `null` null, anything else a string);
//! - `[a, b]` is a list (nested brackets allowed, as in YAML flow style), and so is `a,b`;
//!   `{k: v}` is a mapping.

use super::error::ConfigError;
use super::load::parse_yaml;
use super::node::{join_path, Node, Origin, Value};

pub const OVERRIDE_ORIGIN: &str = "--cfg-options";

/// Applies each `key=value` in order.
pub fn apply_overrides(root: &mut Node, overrides: &[String]) -> Result<(), ConfigError> {
    for item in overrides {
        let (key, value) = parse_override(item)?;
        set_path(root, &key, value)?;
    }
    Ok(())
}

/// Splits `a.b=value` and types the value.
pub fn parse_override(item: &str) -> Result<(String, Node), ConfigError> {
    let origin = Origin::new(OVERRIDE_ORIGIN);
    let err = |msg: String| ConfigError::new(msg).in_file(OVERRIDE_ORIGIN);
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| err(format!("`{item}` is not of the form key=value")))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err(format!("`{item}`: the key must be dotted names like a.b.0.c")));
    }
    let raw = raw.trim();
    let parse = |text: &str| -> Result<Node, ConfigError> {
        parse_yaml(text, &origin).map_err(|e| err(format!("`{item}`: cannot parse the value: {}", e.msg)).at_key(key))
    };
    let value = if raw.is_empty() {
        Node::new(Value::Str(String::new()), origin.clone())
    } else if raw.starts_with('[') || raw.starts_with('{') {
        parse(raw)?
    } else if raw.contains(',') {
        let items = raw.split(',').map(|p| scalar(p.trim(), &origin)).collect();
        Node::new(Value::List(items), origin.clone())
    } else {
        scalar(raw, &origin)
    };
    Ok((key.to_string(), value))
}

/// A YAML-typed scalar; text that YAML would read as something structured stays a string.
fn scalar(text: &str, origin: &Origin) -> Node {
    match parse_yaml(text, origin) {
        Ok(n) if !matches!(n.value, Value::List(_) | Value::Map(_)) => n,
        _ => Node::new(Value::Str(text.to_string()), origin.clone()),
    }
}

fn set_path(root: &mut Node, key: &str, value: Node) -> Result<(), ConfigError> {
    let segments: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    let mut walked = String::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let here = join_path(&walked, seg);
        let err = |msg: String| ConfigError::new(msg).in_file(OVERRIDE_ORIGIN).at_key(here.clone());
        cur = match &mut cur.value {
            Value::Map(entries) => {
                let pos = match entries.iter().position(|(k, _)| k == seg) {
                    Some(p) => p,
                    None => {
                        let child = Node::empty_map(Origin::new(OVERRIDE_ORIGIN));
                        entries.push((seg.to_string(), child));
                        entries.len() - 1
                    }
                };
                &mut entries[pos].1
            }
            Value::List(items) => {
                let idx: usize = seg.parse().map_err(|_| {
                    err(format!("`{walked}` is a list; address its elements by number, not `{seg}`"))
                })?;
                let len = items.len();
                items.get_mut(idx).ok_or_else(|| {
                    err(format!("index {idx} is out of range: `{walked}` has {len} element(s)"))
                })?
            }
            other => {
                return Err(err(format!(
                    "cannot set a key inside `{walked}`: it is {}, not a mapping or a list",
                    other.kind_name()
                )))
            }
        };
        if last {
            *cur = value;
            return Ok(());
        }
        walked = here;
    }
    unreachable!("the key has at least one segment")
}
