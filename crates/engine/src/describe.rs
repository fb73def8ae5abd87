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

/// What a Describe call accepts as MaxResults, as the EC2 API reference documents it per action.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min: i64,
    pub max: i64,
    /// Values above `max` return `max` items (the reference says so for this action) instead of
    /// being refused. The AWS CLI relies on it: it sends `MaxResults=1000` by default for
    /// describe-volumes and describe-snapshots.
    pub clamp_above: bool,
    /// EC2 refuses MaxResults together with explicit ids on some calls.
    pub ids_exclude_max: bool,
}

/// DescribeVolumes: "between 5 and 500; if you specify a value larger than 500, only 500 items are
/// returned"; not with VolumeIds.
pub(crate) const VOLUMES: Limits = Limits { min: 5, max: 500, clamp_above: true, ids_exclude_max: true };
/// DescribeVolumeStatus: "between 5 and 1,000; if the value is larger than 1,000, only 1,000 results
/// are returned"; not with VolumeIds.
pub(crate) const VOLUME_STATUS: Limits = Limits { min: 5, max: 1000, clamp_above: true, ids_exclude_max: true };
/// DescribeVolumesModifications: "up to a limit of 500".
pub(crate) const VOLUME_MODIFICATIONS: Limits = Limits { min: 5, max: 500, clamp_above: true, ids_exclude_max: false };
/// DescribeSnapshots: "between 5 and 1,000; if MaxResults is given a value larger than 1,000, only
/// 1,000 results are returned"; not with SnapshotIds.
pub(crate) const SNAPSHOTS: Limits = Limits { min: 5, max: 1000, clamp_above: true, ids_exclude_max: true };
/// DescribeInstances: "between 5 and 1000"; not with InstanceIds.
pub(crate) const INSTANCES: Limits = Limits { min: 5, max: 1000, clamp_above: false, ids_exclude_max: true };
/// DescribeTags: "between 5 and 1000".
pub(crate) const TAGS: Limits = Limits { min: 5, max: 1000, clamp_above: false, ids_exclude_max: false };
/// DescribeImages: up to 1000 per page, with or without ImageIds.
pub const IMAGES: Limits = Limits { min: 1, max: 1000, clamp_above: true, ids_exclude_max: false };

/// Validate and apply a query to items already restricted to the caller and sorted by id.
pub(crate) fn run<'a, T: Filterable + Clone + 'a>(
    q: &ListQuery,
    known_filters: &[&str],
    limits: Limits,
    items: impl Iterator<Item = &'a T>,
    id_of: impl Fn(&T) -> &str,
) -> Result<Page<T>> {
    filter::validate(&q.filters, known_filters)?;
    let page_size = page_size(q, &limits)?;
    let after = q.next_token.as_deref().map(decode_token).transpose()?;
    // Filter on references and clone only what is returned: Describe calls stay cheap however many
    // resources the account has.
    let out: Vec<T> = items
        .filter(|it| q.ids.is_empty() || q.ids.iter().any(|id| id == id_of(it)))
        .filter(|it| after.as_deref().is_none_or(|a| id_of(it) > a))
        .filter(|it| filter::matches(*it, &q.filters))
        .take(page_size.map_or(usize::MAX, |n| n + 1))
        .cloned()
        .collect();
    Ok(cut_page(out, page_size, id_of))
}

/// One page of items the caller already selected (ids, filters) and sorted by `id_of`: for listings
/// that live outside the engine's state, e.g. the built-in images.
pub fn page_of<T>(q: &ListQuery, limits: Limits, items: Vec<T>, id_of: impl Fn(&T) -> &str) -> Result<Page<T>> {
    let page_size = page_size(q, &limits)?;
    let after = q.next_token.as_deref().map(decode_token).transpose()?;
    let out: Vec<T> = items
        .into_iter()
        .filter(|it| after.as_deref().is_none_or(|a| id_of(it) > a))
        .take(page_size.map_or(usize::MAX, |n| n + 1))
        .collect();
    Ok(cut_page(out, page_size, id_of))
}

/// The page size a request asks for, checked against the action's documented range.
fn page_size(q: &ListQuery, limits: &Limits) -> Result<Option<usize>> {
    match q.max_results {
        None => Ok(None),
        Some(_) if limits.ids_exclude_max && !q.ids.is_empty() => {
            Err(EngineError::combination("The parameter ids cannot be used with the parameter maxResults"))
        }
        Some(n) if n > limits.max && limits.clamp_above => Ok(Some(limits.max as usize)),
        Some(n) if n < limits.min || n > limits.max => Err(EngineError::invalid_value(format!(
            "Value ( {n} ) for parameter maxResults is invalid. Parameter must be between {} and {}.",
            limits.min, limits.max
        ))),
        Some(n) => Ok(Some(n as usize)),
    }
}

/// Keep `page_size` items of `out` (which holds at most one more) and name the last one kept in the
/// token when there are more.
fn cut_page<T>(mut out: Vec<T>, page_size: Option<usize>, id_of: impl Fn(&T) -> &str) -> Page<T> {
    let mut next_token = None;
    if let Some(n) = page_size
        && out.len() > n
    {
        out.truncate(n);
        next_token = out.last().map(|it| encode_token(id_of(it)));
    }
    Page { items: out, next_token }
}

pub(crate) fn encode_token(last_id: &str) -> String {
    crate::page_token::encode(crate::page_token::EC2, last_id)
}

pub(crate) fn decode_token(t: &str) -> Result<String> {
    crate::page_token::decode(crate::page_token::EC2, t)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(max_results: Option<i64>, ids: &[&str], next_token: Option<String>) -> ListQuery {
        ListQuery { ids: ids.iter().map(|s| s.to_string()).collect(), filters: vec![], max_results, next_token }
    }

    fn code(r: Result<Option<usize>>) -> &'static str {
        r.err().map_or("ok", |e| e.code())
    }

    #[test]
    fn documented_ranges() {
        // The AWS CLI's default page size for describe-volumes and describe-snapshots.
        assert_eq!(page_size(&q(Some(1000), &[], None), &VOLUMES).ok(), Some(Some(500)));
        assert_eq!(page_size(&q(Some(5000), &[], None), &SNAPSHOTS).ok(), Some(Some(1000)));
        assert_eq!(page_size(&q(Some(1001), &[], None), &VOLUME_STATUS).ok(), Some(Some(1000)));
        assert_eq!(page_size(&q(Some(5), &[], None), &VOLUMES).ok(), Some(Some(5)));
        assert_eq!(page_size(&q(None, &["vol-1"], None), &VOLUMES).ok(), Some(None));
        assert_eq!(code(page_size(&q(Some(4), &[], None), &VOLUMES)), "InvalidParameterValue");
        assert_eq!(code(page_size(&q(Some(1001), &[], None), &INSTANCES)), "InvalidParameterValue");
        assert_eq!(code(page_size(&q(Some(1001), &[], None), &TAGS)), "InvalidParameterValue");
        assert_eq!(code(page_size(&q(Some(1000), &["vol-1"], None), &VOLUMES)), "InvalidParameterCombination");
        assert_eq!(code(page_size(&q(Some(5), &["i-1"], None), &INSTANCES)), "InvalidParameterCombination");
        assert_eq!(page_size(&q(Some(5), &["vol-1"], None), &VOLUME_MODIFICATIONS).ok(), Some(Some(5)));
    }

    #[test]
    fn page_of_follows_tokens() {
        let items: Vec<String> = (0..5).map(|n| format!("ami-{n}")).collect();
        let first = page_of(&q(Some(2), &[], None), IMAGES, items.clone(), |s| s).unwrap();
        assert_eq!(first.items, ["ami-0", "ami-1"]);
        let second = page_of(&q(Some(2000), &[], first.next_token), IMAGES, items.clone(), |s| s).unwrap();
        assert_eq!(second.items, ["ami-2", "ami-3", "ami-4"]);
        assert!(second.next_token.is_none());
        let bad = page_of(&q(None, &[], Some("x".into())), IMAGES, items, |s| s);
        assert_eq!(bad.err().map(|e| e.code()), Some("InvalidPaginationToken"));
    }
}
