//! DescribeVolumeStatus.

use crate::describe::{self, ListQuery, Page};
use crate::engine::Engine;
use crate::error::Result;
use crate::model::*;

impl Engine {
    /// DescribeVolumeStatus: every volume of the caller is healthy (`ok`, I/O enabled, no events).
    pub fn describe_volume_status(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<Volume>> {
        let mut rest = Vec::new();
        let mut all_match = true;
        for f in &q.filters {
            let constant: Option<&[&str]> = match f.name.as_str() {
                "volume-status.status" => Some(&["ok"]),
                "volume-status.details-name" => Some(&["io-enabled", "io-performance"]),
                "volume-status.details-status" => Some(&["passed", "not-applicable"]),
                n if n.starts_with("event.") || n.starts_with("action.") => Some(&[]),
                _ => None,
            };
            match constant {
                Some(vals) => all_match &= vals.iter().any(|v| f.values.iter().any(|p| crate::filter::glob(p, v))),
                None => rest.push(f.clone()),
            }
        }
        let inner = ListQuery {
            ids: q.ids.clone(),
            filters: rest,
            max_results: q.max_results,
            next_token: q.next_token.clone(),
        };
        let mut page = self.list_volumes(ctx, &inner, describe::VOLUME_STATUS)?;
        if !all_match {
            page.items.clear();
            page.next_token = None;
        }
        Ok(page)
    }
}
