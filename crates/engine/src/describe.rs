//! What every Describe call shares: all-or-nothing id lookup, filters, and MaxResults/NextToken
//! pagination over a stable (id-ordered) listing.

use crate::error::{EngineError, Result};
use crate::filter::{self, Filter, Filterable};

/// The common part of a Describe request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

pub(crate) struct Limits {
    pub min: i64,
    pub max: i64,
    /// EC2 refuses MaxResults together with explicit ids on some calls.
    pub ids_exclude_max: bool,
}

/// Validate and apply a query to items already restricted to the caller and sorted by id.
pub(crate) fn run<'a, T: Filterable + Clone + 'a>(
    q: &ListQuery,
    known_filters: &[&str],
    limits: Limits,
    items: impl Iterator<Item = &'a T>,
    id_of: impl Fn(&T) -> &str,
) -> Result<Page<T>> {
    filter::validate(&q.filters, known_filters)?;
    let page_size = match q.max_results {
        None => None,
        Some(_) if limits.ids_exclude_max && !q.ids.is_empty() => {
            return Err(EngineError::combination("The parameter ids cannot be used with the parameter maxResults"));
        }
        Some(n) if n < limits.min || n > limits.max => {
            return Err(EngineError::invalid_value(format!(
                "Value ( {n} ) for parameter maxResults is invalid. Parameter must be between {} and {}.",
                limits.min, limits.max
            )));
        }
        Some(n) => Some(n as usize),
    };
    let after = match &q.next_token {
        None => None,
        Some(t) => Some(decode_token(t)?),
    };
    // Filter on references and clone only what is returned: Describe calls stay cheap however many
    // resources the account has.
    let mut out: Vec<T> = items
        .filter(|it| q.ids.is_empty() || q.ids.iter().any(|id| id == id_of(it)))
        .filter(|it| after.as_deref().is_none_or(|a| id_of(it) > a))
        .filter(|it| filter::matches(*it, &q.filters))
        .take(page_size.map_or(usize::MAX, |n| n + 1))
        .cloned()
        .collect();
    let mut next_token = None;
    if let Some(n) = page_size
        && out.len() > n
    {
        out.truncate(n);
        next_token = out.last().map(|it| encode_token(id_of(it)));
    }
    Ok(Page { items: out, next_token })
}

fn encode_token(last_id: &str) -> String {
    format!("bsnt1{}", hex::encode(last_id))
}

fn decode_token(t: &str) -> Result<String> {
    t.strip_prefix("bsnt1")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| EngineError::client("InvalidPaginationToken", format!("The token '{t}' is invalid.")))
}

/// All-or-nothing id check: every requested id must exist (and be the caller's) or the call fails
/// naming the missing ones, as EC2 does.
pub(crate) fn require_all(
    ids: &[String],
    exists: impl Fn(&str) -> bool,
    prefix: &str,
    not_found: &'static str,
    malformed: &'static str,
    noun: &str,
) -> Result<()> {
    for id in ids {
        if !crate::ids::is_valid(prefix, id) {
            return Err(EngineError::client(malformed, format!("Invalid id: \"{id}\" (expecting \"{prefix}-...\")")));
        }
    }
    let missing: Vec<&str> = ids.iter().filter(|id| !exists(id)).map(|s| s.as_str()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let quoted: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
    let msg = if missing.len() == 1 {
        format!("The {noun} {} does not exist.", quoted[0])
    } else {
        format!("The {noun}s {} do not exist.", quoted.join(", "))
    };
    Err(EngineError::client(not_found, msg))
}
