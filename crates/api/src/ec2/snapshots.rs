//! CreateSnapshot, CreateSnapshots, DescribeSnapshots, DeleteSnapshot and the snapshot attribute calls.

use blocksnap_engine::model::{Ctx, Snapshot};
use blocksnap_engine::{
    CreateSnapshot, CreateSnapshots, DescribeSnapshots, Engine, EngineError, PermissionChange, Result, format_time,
};

use super::params::Params;
use super::xml::Xml;

pub fn render_snapshot(x: &mut Xml, s: &Snapshot) {
    x.leaf("snapshotId", &s.id)
        .leaf("volumeId", &s.volume_id)
        .leaf("status", s.state.as_str())
        .opt("statusMessage", s.state_message.as_deref())
        .leaf("startTime", format_time(s.start_time))
        .leaf("progress", s.progress_text())
        .leaf("ownerId", &s.account)
        .leaf("volumeSize", s.volume_size_gib)
        .leaf("description", &s.description)
        .leaf("encrypted", s.encrypted)
        .opt("kmsKeyId", s.kms_key_id.as_deref())
        .opt("dataEncryptionKeyId", s.data_encryption_key_id.as_deref())
        .leaf("storageTier", blocksnap_engine::archive::storage_tier(s))
        .opt("restoreExpiryTime", blocksnap_engine::archive::restore_expiry_time(s).map(format_time))
        .opt("completionTime", s.completion_time.map(format_time));
    if s.encrypted {
        x.leaf("sseType", "sse-ebs");
    }
    x.tag_set(&s.tags);
}

pub fn create_snapshot(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let s = e.create_snapshot(
        ctx,
        CreateSnapshot {
            volume_id: p.required("VolumeId")?,
            description: p.str("Description"),
            tag_specifications: p.tag_specifications()?,
            location: p.str("Location"),
            outpost_arn: p.str("OutpostArn"),
            dry_run: p.dry_run()?,
        },
    )?;
    render_snapshot(x, &s);
    Ok(())
}

pub fn create_snapshots(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let spec = p
        .sub("InstanceSpecification")
        .ok_or_else(|| EngineError::missing("The request must contain the parameter InstanceSpecification"))?;
    let snaps = e.create_snapshots(
        ctx,
        CreateSnapshots {
            instance_id: spec.required("InstanceId").map_err(|_| {
                EngineError::missing("The request must contain the parameter InstanceSpecification.InstanceId")
            })?,
            exclude_boot_volume: spec.bool("ExcludeBootVolume")?.unwrap_or(false),
            exclude_data_volume_ids: spec.list("ExcludeDataVolumeId")?,
            description: p.str("Description"),
            tag_specifications: p.tag_specifications()?,
            copy_tags_from_source: p.str("CopyTagsFromSource"),
            outpost_arn: p.str("OutpostArn"),
            location: p.str("Location"),
            dry_run: p.dry_run()?,
        },
    )?;
    x.set("snapshotSet", &snaps, |x, s| {
        x.leaf("description", &s.description);
        x.tag_set(&s.tags);
        x.leaf("encrypted", s.encrypted)
            .leaf("volumeId", &s.volume_id)
            .leaf("state", s.state.as_str())
            .leaf("volumeSize", s.volume_size_gib)
            .leaf("startTime", format_time(s.start_time))
            .leaf("progress", s.progress_text())
            .leaf("ownerId", &s.account)
            .leaf("snapshotId", &s.id);
        if s.encrypted {
            x.leaf("sseType", "sse-ebs");
        }
    });
    Ok(())
}

pub fn describe_snapshots(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let req = DescribeSnapshots {
        query: p.list_query("SnapshotId")?,
        owner_ids: p.list("Owner")?,
        restorable_by: p.list("RestorableBy")?,
    };
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let page = e.describe_snapshots(ctx, &req)?;
    x.set("snapshotSet", &page.items, render_snapshot);
    x.opt("nextToken", page.next_token);
    Ok(())
}

pub fn delete_snapshot(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    e.delete_snapshot(ctx, &p.required("SnapshotId")?, p.dry_run()?)?;
    x.leaf("return", true);
    Ok(())
}

fn check_attribute(p: &Params, required: bool) -> Result<()> {
    match p.str("Attribute").as_deref() {
        Some("createVolumePermission") => Ok(()),
        Some("productCodes") => Ok(()),
        None if !required => Ok(()),
        None => Err(EngineError::missing("The request must contain the parameter Attribute")),
        Some(a) => Err(EngineError::invalid_value(format!(
            "Value ({a}) for parameter attribute is invalid. Valid values: createVolumePermission, productCodes"
        ))),
    }
}

fn who(item: &Params) -> Option<String> {
    item.str("UserId").or_else(|| item.str("Group"))
}

pub fn modify_snapshot_attribute(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    check_attribute(p, false)?;
    let mut change = PermissionChange::default();
    if let Some(cvp) = p.sub("CreateVolumePermission") {
        change.add = cvp.structs("Add")?.iter().filter_map(who).collect();
        change.remove = cvp.structs("Remove")?.iter().filter_map(who).collect();
    }
    // The older form: OperationType=add|remove with UserId.N / UserGroup.N.
    let mut legacy = p.list("UserId")?;
    legacy.extend(p.list("UserGroup")?);
    if !legacy.is_empty() {
        match p.str("OperationType").as_deref() {
            Some("add") => change.add.extend(legacy),
            Some("remove") => change.remove.extend(legacy),
            _ => {
                return Err(EngineError::missing(
                    "The request must contain the parameter OperationType (add or remove) with UserId/UserGroup",
                ));
            }
        }
    }
    if change.add.is_empty() && change.remove.is_empty() {
        return Err(EngineError::missing("The request must contain the parameter createVolumePermission"));
    }
    e.modify_snapshot_permissions(ctx, &p.required("SnapshotId")?, change, p.dry_run()?)?;
    x.leaf("return", true);
    Ok(())
}

pub fn describe_snapshot_attribute(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    check_attribute(p, true)?;
    let id = p.required("SnapshotId")?;
    let perms = e.snapshot_permissions(ctx, &id)?;
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    x.leaf("snapshotId", &id);
    if p.str("Attribute").as_deref() == Some("productCodes") {
        x.open("productCodes").close("productCodes");
    } else {
        x.set("createVolumePermission", &perms, |x, w| {
            if w == "all" {
                x.leaf("group", "all");
            } else {
                x.leaf("userId", w);
            }
        });
    }
    Ok(())
}

pub fn reset_snapshot_attribute(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    check_attribute(p, true)?;
    let id = p.required("SnapshotId")?;
    let current = e.snapshot_permissions(ctx, &id)?;
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    if !current.is_empty() {
        e.modify_snapshot_permissions(ctx, &id, PermissionChange { add: vec![], remove: current }, false)?;
    }
    x.leaf("return", true);
    Ok(())
}

/// A CopySnapshot PresignedUrl must be a valid SigV4 presigned `CopySnapshot` request for the same
/// source snapshot, signed by the caller's account.
fn check_presigned_url(e: &Engine, ctx: &Ctx, url: &str, source_region: &str, source_id: &str) -> Result<()> {
    let bad = |why: &str| EngineError::invalid_value(format!("The PresignedUrl is not valid: {why}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("not an http(s) URL"))?;
    let (authority, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let uri: http::Uri = path_query.parse().map_err(|_| bad("malformed path or query"))?;
    let host_headers = |host: &str| -> Result<http::HeaderMap> {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, http::HeaderValue::from_str(host).map_err(|_| bad("malformed host"))?);
        Ok(headers)
    };
    let headers = host_headers(authority)?;
    let parsed = blocksnap_sigv4::parse(&http::Method::GET, &uri, &headers).map_err(|e| bad(&e.to_string()))?;
    if parsed.region != source_region {
        return Err(bad(&format!("it is signed for region {}, not the source region {source_region}", parsed.region)));
    }
    let key = e
        .access_key(&parsed.access_key_id)?
        .filter(|k| k.account == ctx.account)
        .ok_or_else(|| bad("it is not signed by the calling account"))?;
    let now = time::OffsetDateTime::now_utc();
    let verify = |headers: &http::HeaderMap| {
        blocksnap_sigv4::verify(&parsed, &key.secret_access_key, &http::Method::GET, &uri, headers, b"", now)
    };
    if let Err(first) = verify(&headers) {
        // The AWS SDK for JavaScript v3 signs the URL's host without its port (`host: hostname`)
        // while the URL it returns keeps the port: a URL for an endpoint with an explicit port (as
        // every self-hosted endpoint has) is accepted when it verifies against the bare host too.
        // The signature still covers the action, the snapshot and the signer's key and date.
        match host_without_port(authority) {
            Some(host) if verify(&host_headers(host)?).is_ok() => {}
            _ => return Err(bad(&first.to_string())),
        }
    }
    let q = Params::from_pairs(form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()));
    if q.str("Action").as_deref() != Some("CopySnapshot") || q.str("SourceSnapshotId").as_deref() != Some(source_id) {
        return Err(bad("it does not request a CopySnapshot of the same source snapshot"));
    }
    Ok(())
}

/// `host` of `host:port` (`[v6]` of `[v6]:port`); `None` when the authority names no port.
fn host_without_port(authority: &str) -> Option<&str> {
    let (host, port) = authority.rsplit_once(':')?;
    let bare_v6 = host.contains(':') && !host.ends_with(']');
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !bare_v6 && !host.is_empty()).then_some(host)
}

pub fn copy_snapshot(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let source_region = p.required("SourceRegion")?;
    let source_snapshot_id = p.required("SourceSnapshotId")?;
    if let Some(dest) = p.str("DestinationRegion").filter(|d| !d.is_empty())
        && dest != ctx.region
    {
        return Err(EngineError::invalid_value(format!(
            "DestinationRegion {dest} differs from the region of the request ({}): send the request to the destination region.",
            ctx.region
        )));
    }
    if let Some(url) = p.str("PresignedUrl").filter(|u| !u.is_empty()) {
        check_presigned_url(e, ctx, &url, &source_region, &source_snapshot_id)?;
    }
    let s = e.copy_snapshot(
        ctx,
        blocksnap_engine::CopySnapshot {
            source_region,
            source_snapshot_id,
            description: p.str("Description"),
            encrypted: p.bool("Encrypted")?,
            kms_key_id: p.str("KmsKeyId").filter(|k| !k.is_empty()),
            tag_specifications: p.tag_specifications()?,
            destination_outpost_arn: p.str("DestinationOutpostArn"),
            completion_duration_minutes: p.int("CompletionDurationMinutes")?,
            dry_run: p.dry_run()?,
        },
    )?;
    x.leaf("snapshotId", &s.id);
    x.tag_set(&s.tags);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn ports_are_split_off_hosts_only() {
        assert_eq!(host_without_port("127.0.0.1:4566"), Some("127.0.0.1"));
        assert_eq!(host_without_port("[::1]:4566"), Some("[::1]"));
        assert_eq!(host_without_port("ec2.us-east-1.amazonaws.com"), None);
        assert_eq!(host_without_port("[::1]"), None);
        assert_eq!(host_without_port("::1"), None);
        assert_eq!(host_without_port("host:"), None);
        assert_eq!(host_without_port(":80"), None);
    }
}
