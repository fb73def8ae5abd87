//! Describe-call filters as EC2 defines them: exact values with `*` and `?` wildcards (backslash
//! escapes), case-sensitive; a filter's values are OR'ed, filters are AND'ed; `tag:Key`, `tag-key`,
//! `tag-value` on every tagged resource.

use crate::error::{EngineError, Result};
use crate::model::Tags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// A resource that can be filtered. `field` returns the resource's values for a filter name, or
/// `None` when the name is not a filter of this resource type.
pub trait Filterable {
    fn field(&self, name: &str) -> Option<Vec<String>>;
    fn tags(&self) -> &Tags;
}

/// Check the filter names before matching, so an unknown filter is an error even on an empty set.
pub fn validate(filters: &[Filter], known: &[&str]) -> Result<()> {
    for f in filters {
        let ok = f.name.starts_with("tag:")
            || f.name == "tag-key"
            || f.name == "tag-value"
            || known.contains(&f.name.as_str());
        if !ok {
            return Err(EngineError::invalid_value(format!("The filter '{}' is invalid", f.name)));
        }
    }
    Ok(())
}

pub fn matches<T: Filterable>(item: &T, filters: &[Filter]) -> bool {
    filters.iter().all(|f| {
        let values: Vec<String> = if let Some(key) = f.name.strip_prefix("tag:") {
            item.tags().get(key).cloned().into_iter().collect()
        } else if f.name == "tag-key" {
            item.tags().keys().cloned().collect()
        } else if f.name == "tag-value" {
            item.tags().values().cloned().collect()
        } else {
            item.field(&f.name).unwrap_or_default()
        };
        values.iter().any(|v| f.values.iter().any(|pat| glob(pat, v)))
    })
}

/// EC2 wildcard match: `*` any run, `?` one character, `\` escapes the next character.
pub fn glob(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy)]
    enum Tok {
        Lit(char),
        One,
        Any,
    }
    let mut toks = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        toks.push(match c {
            '*' => Tok::Any,
            '?' => Tok::One,
            '\\' => Tok::Lit(it.next().unwrap_or('\\')),
            c => Tok::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // Iterative matcher with single backtrack point (classic wildcard algorithm), O(n*m) worst case.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match toks.get(p) {
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| matches!(t, Tok::Any))
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn wildcards() {
        assert!(glob("vol-*", "vol-123"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*b*", "abc"));
        assert!(!glob("B*", "bcd"), "case-sensitive");
        assert!(glob("a\\*", "a*"));
        assert!(!glob("a\\*", "ab"));
        assert!(glob("us-east-1?", "us-east-1a"));
        assert!(glob("*x*y", "axxbxy"));
        assert!(!glob("abc", "abcd"));
    }
}
