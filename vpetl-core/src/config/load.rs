//! Loading a config file with mmengine's semantics (DEVELOPERS: `reference/frameworks.md` §1.2):
//!
//! - `_base_: path` or `_base_: [a, b]`, relative to the file; bases load recursively;
//! - sibling bases may not set the same value: their mappings merge (a model base and a method base
//!   both under `model:`), but a key path that two siblings both set to a non-mapping is an error
//!   naming both files (mmengine forbids any shared top-level key; this is the useful part of it);
//! - the child merges into its bases: mappings merge recursively, scalars and lists replace, and a
//!   mapping holding `_delete_: true` replaces the base mapping instead of merging into it;
//! - `{{_base_.a.b}}` is the merged bases' value at `a.b` (the whole value when it stands alone,
//!   its text when it is part of a longer string);
//! - `{{$NAME}}` / `{{$NAME:default}}` is the environment variable NAME (a missing variable without
//!   a default is an error); `{{fileDirname}}`, `{{fileBasename}}`, `{{fileBasenameNoExtension}}`
//!   and `{{fileExtname}}` describe the file being read. Both are substituted as text before parsing,
//!   so `lr: {{$LR:0.1}}` is a number.

use std::path::{Component as PathComponent, Path, PathBuf};

use super::error::ConfigError;
use super::node::{join_path, Node, Origin, Value};

const BASE_KEY: &str = "_base_";
const DELETE_KEY: &str = "_delete_";
/// Base references are replaced by `<SENTINEL><nonce>_<index>__` before parsing; the per-process
/// nonce keeps text that merely looks like a sentinel from being taken for one.
const SENTINEL: &str = "__vpetl_base_ref_";

fn sentinel_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{SENTINEL}{:x}{:x}_", t as u64, std::process::id())
    })
}

/// Loads `path` and everything it inherits from, returning the merged tree.
pub fn load_file(path: &Path) -> Result<Node, ConfigError> {
    let mut stack = Vec::new();
    let mut node = load_recursive(&normalize(path), None, &mut stack)?;
    strip_delete_keys(&mut node);
    Ok(node)
}

/// Parses one YAML document (no `_base_` handling) with `origin` as its file name.
pub fn parse_yaml(text: &str, origin: &Origin) -> Result<Node, ConfigError> {
    let y: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
        let mut err = ConfigError::new(format!("invalid YAML: {e}")).in_file(origin.as_str());
        if let Some(loc) = e.location() {
            err = err.at_line(loc.line());
        }
        err
    })?;
    from_yaml(y, origin, "")
}

fn from_yaml(y: serde_norway::Value, origin: &Origin, path: &str) -> Result<Node, ConfigError> {
    use serde_norway::Value as Y;
    let value = match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Y::String(s) => Value::Str(s),
        Y::Sequence(items) => Value::List(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| from_yaml(v, origin, &join_path(path, &i.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out: Vec<(String, Node)> = Vec::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(ConfigError::new(format!(
                            "mapping keys must be strings, found {other:?}"
                        ))
                        .in_file(origin.as_str())
                        .at_key(path))
                    }
                };
                let child = from_yaml(v, origin, &join_path(path, &key))?;
                out.push((key, child));
            }
            Value::Map(out)
        }
        Y::Tagged(t) => {
            return Err(ConfigError::new(format!("YAML tags are not supported (found !{})", t.tag))
                .in_file(origin.as_str())
                .at_key(path))
        }
    };
    Ok(Node::new(value, origin.clone()))
}

fn load_recursive(
    path: &Path,
    referenced_from: Option<&Origin>,
    stack: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<Node, ConfigError> {
    let origin = Origin::new(path.display().to_string());
    let canonical = path.canonicalize().map_err(|e| {
        let msg = format!("cannot read config file {}: {e}", path.display());
        match referenced_from {
            Some(parent) => ConfigError::new(msg).in_file(parent.as_str()).at_key(BASE_KEY),
            None => ConfigError::new(msg),
        }
    })?;
    if let Some(pos) = stack.iter().position(|(c, _)| c == &canonical) {
        let chain: Vec<String> =
            stack[pos..].iter().map(|(_, shown)| shown.display().to_string()).chain([origin.to_string()]).collect();
        let closer = referenced_from.unwrap_or(&origin);
        return Err(ConfigError::new(format!("`_base_` cycle: {}", chain.join(" -> ")))
            .in_file(closer.as_str())
            .at_key(BASE_KEY));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
    })?;
    let (text, refs) = substitute_text(&text, path, &origin)?;
    let mut node = if text.trim().is_empty() {
        Node::empty_map(origin.clone())
    } else {
        parse_yaml(&text, &origin)?
    };
    if node.as_map().is_none() {
        return Err(ConfigError::new(format!(
            "a config file must be a mapping at the top level, found {}",
            node.kind_name()
        ))
        .in_file(origin.as_str()));
    }

    let bases = match node.remove(BASE_KEY) {
        None => Vec::new(),
        Some(b) => base_paths(&b, path, &origin)?,
    };
    stack.push((canonical, path.to_path_buf()));
    let mut merged: Option<Node> = None;
    let mut owner_of_key: Vec<(String, PathBuf)> = Vec::new();
    for base_path in &bases {
        let base = load_recursive(base_path, Some(&origin), stack)?;
        let acc = merged.get_or_insert_with(|| Node::empty_map(base.origin.clone()));
        merge_siblings(acc, &base, "", base_path, &mut owner_of_key).map_err(|e| e.in_file(origin.as_str()).at_key(BASE_KEY))?;
    }
    stack.pop();

    resolve_base_refs(&mut node, merged.as_ref(), &refs, "")?;
    match merged {
        None => Ok(node),
        Some(mut base) => {
            merge_into(&mut base, node, "")?;
            Ok(base)
        }
    }
}

/// Merges a sibling base into the bases merged so far; a value both set is an error.
fn merge_siblings(acc: &mut Node, base: &Node, prefix: &str, file: &Path, owners: &mut Vec<(String, PathBuf)>) -> Result<(), ConfigError> {
    for (k, v) in base.as_map().into_iter().flatten() {
        let key_path = join_path(prefix, k);
        match acc.get_mut(k) {
            Some(existing) if existing.as_map().is_some() && v.as_map().is_some() => {
                merge_siblings(existing, v, &key_path, file, owners)?;
            }
            Some(_) => {
                let first = owners
                    .iter()
                    .find(|(p, _)| *p == key_path || key_path.starts_with(&format!("{p}.")) || p.starts_with(&format!("{key_path}.")))
                    .map_or_else(|| "an earlier base".to_string(), |(_, f)| f.display().to_string());
                return Err(ConfigError::new(format!(
                    "`{key_path}` is set by two bases, {first} and {}; sibling bases may share mappings but not values",
                    file.display()
                )));
            }
            None => {
                owners.push((key_path, file.to_path_buf()));
                acc.insert(k, v.clone());
            }
        }
    }
    Ok(())
}

fn base_paths(b: &Node, path: &Path, origin: &Origin) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let names: Vec<&str> = match &b.value {
        Value::Str(s) => vec![s.as_str()],
        Value::List(items) => items
            .iter()
            .map(|n| {
                n.as_str().ok_or_else(|| {
                    ConfigError::new(format!("`_base_` entries must be paths, found {}", n.kind_name()))
                        .in_file(origin.as_str())
                        .at_key(BASE_KEY)
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ConfigError::new(format!(
                "`_base_` must be a path or a list of paths, found {}",
                b.kind_name()
            ))
            .in_file(origin.as_str())
            .at_key(BASE_KEY))
        }
    };
    Ok(names.into_iter().map(|n| normalize(&dir.join(n))).collect())
}

/// Removes `.` and folds `dir/..` lexically, so that messages show tidy paths.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            PathComponent::CurDir => {}
            PathComponent::ParentDir => {
                if matches!(out.components().next_back(), Some(PathComponent::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A `{{_base_.x}}` reference found in the text, replaced there by a sentinel string.
struct BaseRef {
    target: String,
    line: usize,
}

/// Textual substitutions before parsing: environment variables, file variables, and sentinels for
/// base references (a `{` in plain YAML would otherwise start a flow mapping).
fn substitute_text(
    text: &str,
    path: &Path,
    origin: &Origin,
) -> Result<(String, Vec<BaseRef>), ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let line = text[..text.len() - rest.len() + start].matches('\n').count() + 1;
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            ConfigError::new("unclosed `{{`").in_file(origin.as_str()).at_line(line)
        })?;
        let inner = after[..end].trim();
        rest = &after[end + 2..];
        if let Some(env) = inner.strip_prefix('$') {
            let (name, default) = match env.split_once(':') {
                Some((n, d)) => (n.trim(), Some(d)),
                None => (env.trim(), None),
            };
            match (std::env::var(name), default) {
                (Ok(v), _) => out.push_str(&v),
                (Err(_), Some(d)) => out.push_str(d),
                (Err(_), None) => {
                    return Err(ConfigError::new(format!(
                        "environment variable `{name}` is not set and `{{{{${name}}}}}` gives no default \
                         (write `{{{{${name}:default}}}}` to give one)"
                    ))
                    .in_file(origin.as_str())
                    .at_line(line))
                }
            }
        } else if let Some(target) = inner.strip_prefix("_base_.") {
            out.push_str(&format!("{}{}__", sentinel_prefix(), refs.len()));
            refs.push(BaseRef { target: target.to_string(), line });
        } else {
            let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let value = match inner {
                "fileDirname" => path.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                "fileBasename" => file_name,
                "fileBasenameNoExtension" => {
                    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
                }
                "fileExtname" => {
                    path.extension().map(|s| format!(".{}", s.to_string_lossy())).unwrap_or_default()
                }
                other => {
                    return Err(ConfigError::new(format!(
                        "unknown substitution `{{{{{other}}}}}`; use `{{{{_base_.key}}}}`, \
                         `{{{{$ENV_VAR:default}}}}` or one of fileDirname, fileBasename, \
                         fileBasenameNoExtension, fileExtname"
                    ))
                    .in_file(origin.as_str())
                    .at_line(line))
                }
            };
            out.push_str(&value);
        }
    }
    out.push_str(rest);
    Ok((out, refs))
}

fn resolve_base_refs(
    node: &mut Node,
    base: Option<&Node>,
    refs: &[BaseRef],
    path: &str,
) -> Result<(), ConfigError> {
    if refs.is_empty() {
        return Ok(());
    }
    match &mut node.value {
        Value::Str(s) if s.contains(sentinel_prefix()) => {
            let origin = node.origin.clone();
            let lookup = |i: usize| -> Result<&Node, ConfigError> {
                let r = &refs[i];
                let err = |msg: String| {
                    Err(ConfigError::new(msg).in_file(origin.as_str()).at_line(r.line).at_key(path))
                };
                let Some(base) = base else {
                    return err(format!("`{{{{_base_.{}}}}}` used in a file without `_base_`", r.target));
                };
                match base.lookup(&r.target) {
                    Some(n) => Ok(n),
                    None => err(format!("`{{{{_base_.{}}}}}`: the bases have no key `{}`", r.target, r.target)),
                }
            };
            let pieces = split_sentinels(s, refs.len());
            if let [Piece::Ref(i)] = pieces.as_slice() {
                let mut replacement = lookup(*i)?.clone();
                replacement.origin = origin;
                *node = replacement;
                return Ok(());
            }
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Ref(i) => {
                        let n = lookup(i)?;
                        match &n.value {
                            Value::Str(v) => text.push_str(v),
                            Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Null => text.push_str(&n.brief()),
                            _ => {
                                return Err(ConfigError::new(format!(
                                    "`{{{{_base_.{}}}}}` is {} and cannot be part of a string",
                                    refs[i].target,
                                    n.kind_name()
                                ))
                                .in_file(origin.as_str())
                                .at_key(path))
                            }
                        }
                    }
                }
            }
            *s = text;
            Ok(())
        }
        Value::List(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_base_refs(item, base, refs, &join_path(path, &i.to_string()))?;
            }
            Ok(())
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                resolve_base_refs(v, base, refs, &join_path(path, k))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

enum Piece<'a> {
    Text(&'a str),
    Ref(usize),
}

/// Splits a string into text and base references; anything that is not a well-formed sentinel
/// with an index below `count` stays text.
fn split_sentinels(s: &str, count: usize) -> Vec<Piece<'_>> {
    let prefix = sentinel_prefix();
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find(prefix) {
        let tail = &rest[pos + prefix.len()..];
        let parsed = tail.find("__").and_then(|end| tail[..end].parse::<usize>().ok().filter(|i| *i < count).map(|i| (i, end)));
        match parsed {
            Some((i, end)) => {
                if pos > 0 {
                    out.push(Piece::Text(&rest[..pos]));
                }
                out.push(Piece::Ref(i));
                rest = &tail[end + 2..];
            }
            None => {
                out.push(Piece::Text(&rest[..pos + prefix.len()]));
                rest = tail;
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Takes `_delete_` out of a mapping, returning its value.
fn take_delete_flag(node: &mut Node, path: &str) -> Result<bool, ConfigError> {
    match node.remove(DELETE_KEY) {
        None => Ok(false),
        Some(Node { value: Value::Bool(b), .. }) => Ok(b),
        Some(other) => Err(ConfigError::new(format!(
            "`_delete_` must be true or false, found {}",
            other.brief()
        ))
        .in_file(other.origin.as_str())
        .at_key(join_path(path, DELETE_KEY))),
    }
}

/// Merges `child` into `base` (mmengine's `_merge_a_into_b`).
pub fn merge_into(base: &mut Node, child: Node, path: &str) -> Result<(), ConfigError> {
    let Node { value, origin } = child;
    let Value::Map(entries) = value else {
        *base = Node::new(value, origin);
        return Ok(());
    };
    if base.as_map().is_none() {
        *base = Node::new(Value::Map(entries), origin);
        return Ok(());
    }
    for (k, mut v) in entries {
        let key_path = join_path(path, &k);
        let delete = if v.as_map().is_some() { take_delete_flag(&mut v, &key_path)? } else { false };
        match base.get_mut(&k) {
            Some(existing) if v.as_map().is_some() && !delete => {
                if existing.as_map().is_none() {
                    return Err(ConfigError::new(format!(
                        "this is a mapping but {} in the base config ({}); add `_delete_: true` to replace it",
                        existing.kind_name(),
                        existing.origin
                    ))
                    .in_file(v.origin.as_str())
                    .at_key(key_path));
                }
                merge_into(existing, v, &key_path)?;
            }
            Some(existing) => *existing = v,
            None => base.insert(&k, v),
        }
    }
    base.origin = origin;
    Ok(())
}

fn strip_delete_keys(node: &mut Node) {
    match &mut node.value {
        Value::Map(entries) => {
            entries.retain(|(k, _)| k != DELETE_KEY);
            entries.iter_mut().for_each(|(_, v)| strip_delete_keys(v));
        }
        Value::List(items) => items.iter_mut().for_each(strip_delete_keys),
        _ => {}
    }
}
