//! Configuration errors: each names the file, the key path and, where it helps, a suggestion.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The config file (or `--cfg-options`) where the offending value was written.
    pub file: Option<String>,
    /// 1-based line inside `file`, when known (YAML syntax and substitution errors).
    pub line: Option<usize>,
    /// Dotted key path (`model.backbone.depth`, `custom_hooks.0.type`).
    pub key: Option<String>,
    pub msg: String,
}

impl ConfigError {
    pub fn new(msg: impl Into<String>) -> Self {
        ConfigError { file: None, line: None, key: None, msg: msg.into() }
    }

    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        if self.file.is_none() {
            self.file = Some(file.into());
        }
        self
    }

    pub fn at_line(mut self, line: usize) -> Self {
        self.line.get_or_insert(line);
        self
    }

    pub fn at_key(mut self, key: impl Into<String>) -> Self {
        if self.key.is_none() {
            let k = key.into();
            if !k.is_empty() {
                self.key = Some(k);
            }
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ConfigError {}

impl serde::de::Error for ConfigError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let msg = msg.to_string();
        // A component's own, already located error passing through a generic serde boundary.
        if let Some(json) = msg.strip_prefix(crate::registry::LOCATED_PREFIX) {
            if let Ok(parts) = serde_json::from_str::<crate::registry::LocatedParts>(json) {
                return parts.into();
            }
        }
        ConfigError::new(msg)
    }

    fn missing_field(field: &'static str) -> Self {
        ConfigError::new(format!("missing required key `{field}`"))
    }
}

/// The closest candidate by edit distance, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lw = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&lw, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "; did you mean `x`?" or "" when nothing is close.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(word, candidates) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}
