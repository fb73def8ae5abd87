//! CreateTags, DeleteTags, DescribeTags.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, Result, TagSelector};

use super::params::Params;
use super::xml::Xml;

pub fn create_tags(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    e.create_tags(ctx, &p.list("ResourceId")?, &p.tags("Tag")?, p.dry_run()?)?;
    x.leaf("return", true);
    Ok(())
}

pub fn delete_tags(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let selectors = p
        .structs("Tag")?
        .into_iter()
        .filter_map(|t| t.str("Key").map(|key| TagSelector { key, value: t.str("Value") }))
        .collect::<Vec<_>>();
    e.delete_tags(ctx, &p.list("ResourceId")?, &selectors, p.dry_run()?)?;
    x.leaf("return", true);
    Ok(())
}

pub fn describe_tags(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = p.list_query("__none__")?;
    if p.dry_run()? {
        return Err(blocksnap_engine::EngineError::DryRun);
    }
    let page = e.describe_tags(ctx, &q)?;
    x.set("tagSet", &page.items, |x, t| {
        x.leaf("resourceId", &t.resource_id)
            .leaf("resourceType", t.resource_type.as_str())
            .leaf("key", &t.key)
            .leaf("value", &t.value);
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}
