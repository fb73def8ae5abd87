//! EC2 Query parameters: the flat `Name.N.Member` form as a tree you can walk.
//!
//! `Filter.1.Name=a&Filter.1.Value.1=b` becomes `structs("Filter")[0]` with `str("Name")` and
//! `list("Value")`. Lists are ordered by their 1-based index, as EC2 reads them.

use std::collections::BTreeMap;

use blocksnap_engine::{EngineError, Filter, Result, model::Tag};

#[derive(Debug, Clone, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
}

impl Params {
    pub fn from_pairs<'a>(pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>) -> Self {
        Params { map: pairs.map(|(k, v)| (k.into_owned(), v.into_owned())).collect() }
    }

    pub fn extend(&mut self, other: Params) {
        self.map.extend(other.map);
    }

    pub fn str(&self, key: &str) -> Option<String> {
        self.map.get(key).cloned()
    }

    pub fn required(&self, key: &str) -> Result<String> {
        match self.map.get(key) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => Err(EngineError::missing(format!("The request must contain the parameter {key}"))),
        }
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => {
                v.trim().parse::<i64>().map(Some).map_err(|_| {
                    EngineError::invalid_value(format!("Invalid value '{v}' for {key}: expected an integer"))
                })
            }
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key).map(|s| s.to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v == "true" => Ok(Some(true)),
            Some(v) if v == "false" => Ok(Some(false)),
            Some(v) => {
                Err(EngineError::invalid_value(format!("Invalid value '{v}' for {key}: expected true or false")))
            }
        }
    }

    pub fn dry_run(&self) -> Result<bool> {
        Ok(self.bool("DryRun")?.unwrap_or(false))
    }

    /// Entries `prefix.N...` grouped by N in index order, each with the rest of the key.
    fn indexed(&self, prefix: &str) -> Result<BTreeMap<u32, Params>> {
        let mut out: BTreeMap<u32, Params> = BTreeMap::new();
        let dotted = format!("{prefix}.");
        for (k, v) in self.map.range(dotted.clone()..) {
            let Some(rest) = k.strip_prefix(&dotted) else { break };
            let (idx, tail) = match rest.split_once('.') {
                Some((i, t)) => (i, t),
                None => (rest, ""),
            };
            let n: u32 = idx.parse().map_err(|_| {
                EngineError::invalid_value(format!("Invalid parameter name '{k}': '{idx}' is not a list index"))
            })?;
            if n == 0 {
                return Err(EngineError::invalid_value(format!(
                    "Invalid parameter name '{k}': list indexes start at 1"
                )));
            }
            out.entry(n).or_default().map.insert(tail.to_string(), v.clone());
        }
        Ok(out)
    }

    /// A list of scalars: `prefix.1`, `prefix.2`, ...
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.indexed(prefix)?.into_values().filter_map(|p| p.map.get("").cloned()).collect())
    }

    /// A list of structures: `prefix.1.Member`, ...
    pub fn structs(&self, prefix: &str) -> Result<Vec<Params>> {
        Ok(self.indexed(prefix)?.into_values().collect())
    }

    /// A nested structure: `prefix.Member`.
    pub fn sub(&self, prefix: &str) -> Option<Params> {
        let dotted = format!("{prefix}.");
        let map: BTreeMap<String, String> = self
            .map
            .range(dotted.clone()..)
            .take_while(|(k, _)| k.starts_with(&dotted))
            .map(|(k, v)| (k[dotted.len()..].to_string(), v.clone()))
            .collect();
        if map.is_empty() { None } else { Some(Params { map }) }
    }

    pub fn filters(&self) -> Result<Vec<Filter>> {
        self.structs("Filter")?
            .into_iter()
            .map(|f| {
                let name = f
                    .required("Name")
                    .map_err(|_| EngineError::missing("The request must contain the parameter Filter.N.Name"))?;
                Ok(Filter { name, values: f.list("Value")? })
            })
            .collect()
    }

    /// `Tag.N.Key` / `Tag.N.Value` (value defaults to "").
    pub fn tags(&self, prefix: &str) -> Result<Vec<Tag>> {
        self.structs(prefix)?
            .into_iter()
            .map(|t| {
                let key = t.str("Key").ok_or_else(|| {
                    EngineError::missing(format!("The request must contain the parameter {prefix}.N.Key"))
                })?;
                Ok(Tag { key, value: t.str("Value").unwrap_or_default() })
            })
            .collect()
    }

    pub fn tag_specifications(&self) -> Result<Vec<blocksnap_engine::TagSpec>> {
        self.structs("TagSpecification")?
            .into_iter()
            .map(|s| Ok(blocksnap_engine::TagSpec { resource_type: s.str("ResourceType"), tags: s.tags("Tag")? }))
            .collect()
    }

    pub fn list_query(&self, ids_key: &str) -> Result<blocksnap_engine::ListQuery> {
        Ok(blocksnap_engine::ListQuery {
            ids: self.list(ids_key)?,
            filters: self.filters()?,
            max_results: self.int("MaxResults")?,
            next_token: self.str("NextToken").filter(|t| !t.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Params {
        Params::from_pairs(form_urlencoded::parse(q.as_bytes()))
    }

    #[test]
    fn flattening() {
        let q = p(
            "Filter.1.Name=a&Filter.1.Value.1=x&Filter.1.Value.2=y&Filter.2.Name=b&Filter.2.Value.1=z&VolumeId.2=v2&VolumeId.1=v1&VolumeId.10=v10",
        );
        let f = q.filters().unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].values, vec!["x", "y"]);
        assert_eq!(f[1].name, "b");
        assert_eq!(q.list("VolumeId").unwrap(), vec!["v1", "v2", "v10"]);
    }

    #[test]
    fn tag_specs_and_subs() {
        let q = p(
            "TagSpecification.1.ResourceType=volume&TagSpecification.1.Tag.1.Key=k&TagSpecification.1.Tag.1.Value=v&TagSpecification.1.Tag.2.Key=e&Placement.AvailabilityZone=us-east-1a",
        );
        let s = q.tag_specifications().unwrap();
        assert_eq!(s[0].resource_type.as_deref(), Some("volume"));
        assert_eq!(s[0].tags.len(), 2);
        assert_eq!(s[0].tags[1].value, "");
        assert_eq!(q.sub("Placement").unwrap().str("AvailabilityZone").as_deref(), Some("us-east-1a"));
        assert!(q.sub("Plac").is_none());
    }

    #[test]
    fn bad_values() {
        assert!(p("Size=abc").int("Size").is_err());
        assert!(p("DryRun=maybe").dry_run().is_err());
        assert!(p("VolumeId.x=1").list("VolumeId").is_err());
        assert!(p("VolumeId.0=1").list("VolumeId").is_err());
    }
}
